#!/usr/bin/env bash
# hello.sh: flotilla/lab-hello, the lab's hello-world. FROM scratch + busybox-static; the default
# command prints one line with the container's hostname and exits 0. Because busybox is whole,
# smoke tests can also run e.g. `httpd -f -p 8080` or `sleep 3600` from it.
# Usage: bash hello.sh [--force|--tag]   (prints the tag as the last line of stdout)
set -Eeuo pipefail
if ! declare -F fl_init >/dev/null; then
  FLOTILLA_IMAGES_DIR="${FLOTILLA_IMAGES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]:-.}")" && pwd)}"
  [[ -f "$FLOTILLA_IMAGES_DIR/common.sh" ]] ||
    { echo "hello.sh: no common.sh in $FLOTILLA_IMAGES_DIR (set FLOTILLA_IMAGES_DIR)" >&2; exit 2; }
  # shellcheck source=common.sh
  source "$FLOTILLA_IMAGES_DIR/common.sh"
fi
fl_init hello "${BASH_SOURCE[0]:-}" "$@"

build() {
  fl_tmpdir
  local root="$FL_TMP/rootfs"
  fl_log "busybox-static rootfs"
  fl_add_busybox "$root"
  fl_add_etc_basics "$root"
  cat >"$root/bin/hello" <<'EOF'
#!/bin/sh
echo "Hello from flotilla/lab-hello on $(hostname): this container ran, so the Engine pulled and started it."
EOF
  chmod 0755 "$root/bin/hello"
  local v; v=$(fl_deb_version bookworm busybox-static)
  fl_commit_rootfs "$root" - 'CMD ["/bin/hello"]' "LABEL flotilla.busybox-version=$v"
}

fl_main build
