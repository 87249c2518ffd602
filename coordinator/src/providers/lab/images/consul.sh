#!/usr/bin/env bash
# consul.sh: flotilla/lab-consul. HashiCorp Consul as built by Debian bullseye (consul
# 1.8.7+dfsg1; bookworm has none), fetched with a private apt state for the bullseye suite (the
# machine's own apt sources are not touched), unpacked with dpkg-deb -x, on a FROM-scratch image
# with busybox-static and the glibc libraries `ldd` lists. ENTRYPOINT /bin/consul, CMD version.
# Usage: bash consul.sh [--force|--tag]   (prints the tag as the last line of stdout)
set -Eeuo pipefail
if ! declare -F fl_init >/dev/null; then
  FLOTILLA_IMAGES_DIR="${FLOTILLA_IMAGES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]:-.}")" && pwd)}"
  [[ -f "$FLOTILLA_IMAGES_DIR/common.sh" ]] ||
    { echo "consul.sh: no common.sh in $FLOTILLA_IMAGES_DIR (set FLOTILLA_IMAGES_DIR)" >&2; exit 2; }
  # shellcheck source=common.sh
  source "$FLOTILLA_IMAGES_DIR/common.sh"
fi
fl_init consul "${BASH_SOURCE[0]:-}" "$@"

CONSUL_SUITE=bullseye

build() {
  fl_tmpdir
  local root="$FL_TMP/rootfs" x="$FL_TMP/pkg-consul" version
  version=$(fl_deb_version "$CONSUL_SUITE" consul)
  fl_log "consul $version from $CONSUL_SUITE"
  fl_extract "$CONSUL_SUITE" consul "$x"
  install -D -m 0755 "$x/usr/bin/consul" "$root/bin/consul"
  fl_log "busybox, glibc libraries, /etc"
  fl_add_busybox "$root"
  fl_add_libs "$root" "$root/bin/consul"
  fl_add_etc_basics "$root"
  mkdir -p "$root/consul/data" "$root/consul/config"
  fl_log "checking the binary runs in its own rootfs"
  chroot "$root" /bin/consul version >&2
  fl_commit_rootfs "$root" - 'ENTRYPOINT ["/bin/consul"]' 'CMD ["version"]' \
    'EXPOSE 8300 8301 8301/udp 8302 8302/udp 8500 8600 8600/udp' \
    "LABEL flotilla.consul-version=$version flotilla.debian-suite=$CONSUL_SUITE"
}

fl_main build
