#!/usr/bin/env bash
# registry.sh: flotilla/lab-registry, the lab's image registry. Debian bookworm's docker-registry
# (the CNCF distribution registry 2.8.2) on a FROM-scratch image with busybox-static (for
# `wget` health checks and `docker exec sh`) and the glibc libraries `ldd` lists. Filesystem
# storage under /var/lib/registry (mount a volume there to keep it), plain HTTP on :5000, no
# auth: it only listens on the lab's private network and on a port published on 127.0.0.1.
# Usage: bash registry.sh [--force|--tag]   (prints the tag as the last line of stdout)
set -Eeuo pipefail
if ! declare -F fl_init >/dev/null; then
  FLOTILLA_IMAGES_DIR="${FLOTILLA_IMAGES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]:-.}")" && pwd)}"
  [[ -f "$FLOTILLA_IMAGES_DIR/common.sh" ]] ||
    { echo "registry.sh: no common.sh in $FLOTILLA_IMAGES_DIR (set FLOTILLA_IMAGES_DIR)" >&2; exit 2; }
  # shellcheck source=common.sh
  source "$FLOTILLA_IMAGES_DIR/common.sh"
fi
fl_init registry "${BASH_SOURCE[0]:-}" "$@"

build() {
  fl_tmpdir
  local root="$FL_TMP/rootfs" x="$FL_TMP/pkg-docker-registry" version
  version=$(fl_deb_version bookworm docker-registry)
  fl_log "docker-registry $version from bookworm"
  fl_extract bookworm docker-registry "$x"
  install -D -m 0755 "$x/usr/bin/docker-registry" "$root/bin/registry"
  fl_log "busybox, glibc libraries, /etc"
  fl_add_busybox "$root"
  fl_add_libs "$root" "$root/bin/registry"
  fl_add_etc_basics "$root"
  mkdir -p "$root/var/lib/registry" "$root/etc/docker/registry"
  cat >"$root/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
  fl_log "checking the binary runs in its own rootfs"
  chroot "$root" /bin/registry --version >&2
  fl_commit_rootfs "$root" - 'ENTRYPOINT ["/bin/registry"]' \
    'CMD ["serve", "/etc/docker/registry/config.yml"]' 'EXPOSE 5000' \
    "LABEL flotilla.registry-version=$version flotilla.debian-suite=bookworm"
}

fl_main build
