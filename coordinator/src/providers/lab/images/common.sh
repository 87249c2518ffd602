# shellcheck shell=bash
# common.sh: helpers shared by the lab image recipes (host.sh, consul.sh, hello.sh, registry.sh).
#
# This file is sourced, never run. A recipe finds it through FLOTILLA_IMAGES_DIR (default: the
# recipe's own directory). It can also be concatenated in front of a recipe and fed to `bash -s`
# (the recipe only sources it when `fl_init` is not defined yet). In that mode the recipe cannot
# read its own text, so the caller must pass FLOTILLA_RECIPE_HASH (see fl_init).
#
# Contract of every recipe:
#   * image tag  flotilla/lab-<name>:<hash>, where <hash> is the first 12 hex digits of
#     sha256(recipe file bytes ++ common.sh bytes); labels flotilla.image=<name> and
#     flotilla.recipe-hash=<hash>.
#   * if that tag already exists with that label, nothing is built: "up to date" on stderr.
#   * progress lines "==> [name] [+Ns] step" on stderr; the tag alone as the LAST line of stdout.
#   * temp dirs, temp containers and temp image tags are removed on exit, failure or signal.
#   * only Debian packages are used; no registry is contacted (FROM scratch or FROM a local image).
#
# Environment (all optional):
#   FLOTILLA_IMAGES_DIR      where common.sh and the recipes live
#   FLOTILLA_RECIPE_HASH     the 12-hex hash, when the recipe's text cannot be read (bash -s)
#   FLOTILLA_FORCE=1         rebuild even if the tag exists (same as --force)
#   FLOTILLA_CACHE_DIR       default /var/cache/flotilla (debs/, apt/, locks/ below it)
#   FLOTILLA_WORK_DIR        where temp dirs go, default /var/tmp (must not be noexec/nodev:
#                            debootstrap makes device nodes and runs binaries there)
#   FLOTILLA_DEBIAN_MIRROR   default: the machine's Debian mirror, else http://deb.debian.org/debian
#   FLOTILLA_DEBIAN_SECURITY_MIRROR   default http://deb.debian.org/debian-security
#   FLOTILLA_APT_MAX_AGE     seconds before a private apt index is refreshed, default 86400
#   DOCKER_HOST etc.         honoured by the docker CLI as usual

set -Eeuo pipefail
shopt -s inherit_errexit 2>/dev/null || true
umask 022
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

: "${FLOTILLA_CACHE_DIR:=/var/cache/flotilla}"
: "${FLOTILLA_WORK_DIR:=/var/tmp}"
: "${FLOTILLA_APT_MAX_AGE:=86400}"
: "${FLOTILLA_DEBIAN_SECURITY_MIRROR:=http://deb.debian.org/debian-security}"
FL_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

FL_NAME=image
FL_T0=$SECONDS
FL_TMP=
FL_HASH=
FL_TAG=
FL_FORCE=${FLOTILLA_FORCE:-0}
FL_CLEAN_CONTAINERS=()
FL_CLEAN_IMAGES=()

# ---------------------------------------------------------------------------------------------
# logging

fl_log() { printf '==> [%s] [+%ss] %s\n' "$FL_NAME" "$((SECONDS - FL_T0))" "$*" >&2; }
fl_die() { fl_log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# clean-up: temp containers, temp image tags, temp dir (anything mounted below it first)

fl__cleanup() {
  local rc=$? c i m
  trap - ERR
  set +e
  for c in "${FL_CLEAN_CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
  for i in "${FL_CLEAN_IMAGES[@]}"; do docker rmi "$i" >/dev/null 2>&1; done
  if [[ -n "$FL_TMP" && -d "$FL_TMP" ]]; then
    # never let rm -rf walk into a bind mount (e.g. /proc or /dev in a chroot)
    while read -r m; do umount -l "$m" 2>/dev/null; done < <(
      awk -v p="$FL_TMP/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system "$FL_TMP"
  fi
  if [[ $rc -ne 0 ]]; then fl_log "FAILED (exit $rc)"; fi
  return "$rc"
}
fl__on_err() { fl_log "command failed (exit $1) at line $2: $3"; }
trap fl__cleanup EXIT
trap 'fl__on_err $? $LINENO "$BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM HUP

fl_tmpdir() { # makes FL_TMP once; removed on exit
  if [[ -z "$FL_TMP" ]]; then
    mkdir -p "$FLOTILLA_WORK_DIR"
    FL_TMP=$(mktemp -d "$FLOTILLA_WORK_DIR/flotilla-$FL_NAME.XXXXXX")
  fi
}
fl_clean_container() { FL_CLEAN_CONTAINERS+=("$1"); }
fl_clean_image() { FL_CLEAN_IMAGES+=("$1"); }

# ---------------------------------------------------------------------------------------------
# identity: name, hash, tag

# fl_init NAME RECIPE_FILE [ARGS...]   (ARGS: --force | --tag | --help)
fl_init() {
  FL_NAME=$1
  local recipe=${2:-} common="${FLOTILLA_IMAGES_DIR:-}/common.sh"
  shift 2 || true
  if [[ -n "${FLOTILLA_RECIPE_HASH:-}" ]]; then
    FL_HASH=$FLOTILLA_RECIPE_HASH
  elif [[ -n "$recipe" && -f "$recipe" && -f "$common" ]]; then
    FL_HASH=$(cat -- "$recipe" "$common" | sha256sum | cut -c1-12)
  else
    fl_die "cannot read the recipe and common.sh to hash them; set FLOTILLA_IMAGES_DIR or FLOTILLA_RECIPE_HASH"
  fi
  [[ "$FL_HASH" =~ ^[0-9a-f]{12}$ ]] || fl_die "bad recipe hash '$FL_HASH'"
  FL_TAG="flotilla/lab-$FL_NAME:$FL_HASH"
  local a
  for a in "$@"; do
    case $a in
      --force) FL_FORCE=1 ;;
      --tag) printf '%s\n' "$FL_TAG"; exit 0 ;;
      -h|--help) printf 'usage: %s [--force|--tag]\nbuilds %s\n' "$0" "$FL_TAG"; exit 0 ;;
      *) fl_die "unknown argument $a" ;;
    esac
  done
  command -v docker >/dev/null || fl_die "docker CLI not found"
}

fl_image_exists() { # TAG exists and carries this recipe's hash
  local got
  got=$(docker image inspect -f '{{ index .Config.Labels "flotilla.recipe-hash" }}' "$1" 2>/dev/null) || return 1
  [[ "$got" == "$FL_HASH" ]]
}

# fl_main BUILD_FUNCTION: lock, no-op if up to date, else build, verify, print the tag.
# The build runs with stdin from /dev/null, so under `bash -s` no command can eat the script.
fl_main() {
  local build=$1
  mkdir -p "$FLOTILLA_CACHE_DIR/locks"
  local lk
  exec {lk}>"$FLOTILLA_CACHE_DIR/locks/$FL_NAME.lock"
  if ! flock -n "$lk"; then fl_log "waiting for another build of $FL_NAME"; flock "$lk"; fi
  if [[ "$FL_FORCE" != 1 ]] && fl_image_exists "$FL_TAG"; then
    fl_log "up to date: $FL_TAG"
  else
    fl_log "building $FL_TAG"
    local old_id new_id
    old_id=$(docker image inspect -f '{{.Id}}' "$FL_TAG" 2>/dev/null) || true
    "$build" </dev/null
    fl_image_exists "$FL_TAG" || fl_die "build finished but $FL_TAG is missing"
    new_id=$(docker image inspect -f '{{.Id}}' "$FL_TAG")
    if [[ -n $old_id && $old_id != "$new_id" ]]; then docker rmi "$old_id" >/dev/null 2>&1 || true; fi
    fl_log "built $FL_TAG ($(fl_image_size "$FL_TAG"))"
    fl_prune_old
  fi
  printf '%s\n' "$FL_TAG"
}

# older builds of this image (other hashes) are untagged unless a container still uses them
# or FLOTILLA_KEEP_OLD=1
fl_prune_old() {
  [[ "${FLOTILLA_KEEP_OLD:-0}" == 1 ]] && return 0
  local t
  while read -r t; do
    [[ $t == "$FL_TAG" || $t == *"<none>"* ]] && continue
    if docker rmi "$t" >/dev/null 2>&1; then fl_log "removed old $t"; fi
  done < <(docker image ls --filter "label=flotilla.image=$FL_NAME" --format '{{.Repository}}:{{.Tag}}' "flotilla/lab-$FL_NAME")
}

fl_image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'; }

# ---------------------------------------------------------------------------------------------
# Debian packages: private apt states per suite, .deb cache

fl_debian_mirror() {
  if [[ -n "${FLOTILLA_DEBIAN_MIRROR:-}" ]]; then printf '%s\n' "$FLOTILLA_DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null |
      grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ') || true
  printf '%s\n' "${m%/}" | sed 's|^$|http://deb.debian.org/debian|'
}

# fl_apt SUITE APT-GET-ARGS... / fl_apt_cache SUITE APT-CACHE-ARGS...: apt on a private state for
# SUITE (never the machine's own sources or lists, so bullseye works the same on a bookworm machine)
fl__apt_opts() {
  local st="$FLOTILLA_CACHE_DIR/apt/$1"
  FL_APT_OPTS=(-q
    -o Dir::Etc::sourcelist="$st/sources.list" -o Dir::Etc::sourceparts="$st/empty"
    -o Dir::Etc::preferences="$st/empty/none" -o Dir::Etc::preferencesparts="$st/empty"
    -o Dir::State::Lists="$st/lists" -o Dir::Cache="$st/cache"
    -o APT::Architectures::=amd64 -o Acquire::Languages=none -o APT::Sandbox::User=root
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
}
fl_apt() { local FL_APT_OPTS; fl__apt_opts "$1"; shift; apt-get "${FL_APT_OPTS[@]}" "$@"; }
fl_apt_cache() { local FL_APT_OPTS; fl__apt_opts "$1"; shift; apt-cache "${FL_APT_OPTS[@]}" "$@"; }

fl_apt_prepare() { # SUITE [force]: write its sources.list, refresh the index when old
  local suite=$1 force=${2:-0} st="$FLOTILLA_CACHE_DIR/apt/$1" mirror
  mirror=$(fl_debian_mirror)
  mkdir -p "$st/lists/partial" "$st/cache/archives/partial" "$st/empty"
  cat >"$st/sources.list.new" <<EOF
deb [signed-by=$FL_KEYRING] $mirror $suite main
deb [signed-by=$FL_KEYRING] $mirror $suite-updates main
deb [signed-by=$FL_KEYRING] $FLOTILLA_DEBIAN_SECURITY_MIRROR $suite-security main
EOF
  if ! cmp -s "$st/sources.list.new" "$st/sources.list"; then mv "$st/sources.list.new" "$st/sources.list"; force=1
  else rm -f "$st/sources.list.new"; fi
  local stamp="$st/updated" lk
  if [[ $force == 1 || ! -f $stamp ]] || (( $(date +%s) - $(stat -c %Y "$stamp") > FLOTILLA_APT_MAX_AGE )); then
    exec {lk}>"$st.update.lock"; flock "$lk"   # two recipes may share a suite
    fl_log "apt-get update ($suite, $mirror)"
    fl_apt "$suite" update >&2
    touch "$stamp"
    exec {lk}>&-
  fi
}

# fl_deb SUITE PKG: print the path of PKG's candidate .deb, downloading it into
# $FLOTILLA_CACHE_DIR/debs/SUITE only when that exact file (checked by SHA256) is not there yet.
fl_deb() ( # a subshell: the download lock is released when it returns
  local suite=$1 pkg=$2 dir="$FLOTILLA_CACHE_DIR/debs/$1" line file sum try
  mkdir -p "$dir"
  fl_apt_prepare "$suite"
  local lk; exec {lk}>"$dir.lock"; flock "$lk"
  for try in 1 2; do
    if line=$(fl_apt "$suite" download --print-uris "$pkg" 2>/dev/null | grep -m1 "^'"); then
      file=$(awk '{ print $2 }' <<<"$line"); sum=$(awk '{ print $4 }' <<<"$line"); sum=${sum#SHA256:}
      if [[ -f "$dir/$file" ]] && sha256sum "$dir/$file" | grep -q "^$sum "; then
        printf '%s\n' "$dir/$file"; return 0
      fi
      fl_log "downloading $pkg ($suite)"
      if (cd "$dir" && fl_apt "$suite" download "$pkg" >&2) &&
         sha256sum "$dir/$file" | grep -q "^$sum "; then
        printf '%s\n' "$dir/$file"; return 0
      fi
    fi
    [[ $try == 1 ]] && fl_apt_prepare "$suite" 1   # stale or missing index: refresh once
  done
  fl_die "cannot get package $pkg from $suite"
)

fl_deb_version() { # SUITE PKG: the candidate version
  fl_apt_prepare "$1"
  fl_apt_cache "$1" policy "$2" | awk '$1 == "Candidate:" && $2 != "(none)" { print $2; f = 1 } END { exit !f }'
}

# fl_extract SUITE PKG DIR: unpack PKG's files (no maintainer scripts) into DIR
fl_extract() {
  local deb; deb=$(fl_deb "$1" "$2")
  mkdir -p "$3"; dpkg-deb -x "$deb" "$3"
}

# fl_ensure_host_tool CMD PKG: install a build tool on this machine with apt if missing
fl_ensure_host_tool() {
  command -v "$1" >/dev/null && return 0
  fl_log "installing $2 on this machine"
  if ! apt-get install -y -q "$2" >&2; then apt-get update -q >&2; apt-get install -y -q "$2" >&2; fi
  command -v "$1" >/dev/null || fl_die "$1 still missing after installing $2"
}

# ---------------------------------------------------------------------------------------------
# small rootfs helpers for FROM-scratch images

# fl_add_busybox ROOT: busybox-static at /bin/busybox plus a symlink per applet
fl_add_busybox() {
  local root=$1 x="$FL_TMP/pkg-busybox" a
  [[ -d $x ]] || fl_extract bookworm busybox-static "$x"
  install -D -m 0755 "$x/bin/busybox" "$root/bin/busybox"
  while read -r a; do
    [[ -z $a || -e "$root/$a" || -L "$root/$a" ]] && continue
    mkdir -p "$root/${a%/*}"; ln -s /bin/busybox "$root/$a"
  done < <("$root/bin/busybox" --list-full)
}

fl__resolve_in() { # ROOT PATH: follow symlinks of PATH inside ROOT (absolute targets stay in ROOT)
  local root=$1 p=$2 t n=0
  while [[ -L "$root$p" ]] && (( n++ < 20 )); do
    t=$(readlink "$root$p")
    if [[ $t == /* ]]; then p=$t; else p="$(dirname "$p")/$t"; fi
  done
  printf '%s\n' "$root$p"
}

# fl_add_libs ROOT BINARY...: the shared libraries `ldd` lists (and the dynamic loader), taken
# from the Debian packages that own them on this machine, fetched fresh from bookworm
fl_add_libs() {
  local root=$1 bin p pkg x; shift
  for bin in "$@"; do
    while read -r p; do
      pkg=$(dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1) ||
        pkg=$(dpkg -S "$(readlink -f "$p")" 2>/dev/null | head -n1 | cut -d: -f1) || true
      [[ -n $pkg ]] || fl_die "no package owns $p (needed by $bin)"
      x="$FL_TMP/pkg-$pkg"
      [[ -d $x ]] || fl_extract bookworm "$pkg" "$x"
      [[ -e "$x$p" ]] || fl_die "$pkg does not contain $p"
      install -D -m 0755 "$(fl__resolve_in "$x" "$p")" "$root$p"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
  done
}

fl_add_etc_basics() { # ROOT: passwd, group, nsswitch.conf, /tmp
  local root=$1
  mkdir -p "$root/etc" "$root/tmp" "$root/root"
  chmod 1777 "$root/tmp"; chmod 0700 "$root/root"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'shadow: files' 'hosts: files dns' \
    'networks: files' 'protocols: files' 'services: files' >"$root/etc/nsswitch.conf"
}

# ---------------------------------------------------------------------------------------------
# turning a rootfs directory into the final image

# fl_commit_rootfs ROOT STOPSIGNAL [CHANGE...]
# `docker import` of ROOT with the labels, a PATH and each CHANGE (Dockerfile lines such as
# 'CMD ["/bin/x"]', 'ENTRYPOINT [...]', 'ENV a=b', 'LABEL a=b', 'EXPOSE 5000'). Engine 20.10's
# import refuses STOPSIGNAL: when STOPSIGNAL is not "-", the import goes to a temp tag and a
# one-line `docker build` FROM that local image (no pull) adds it; the temp tag is then dropped.
fl_commit_rootfs() {
  local root=$1 stopsig=$2 c target ctx; shift 2
  local changes=(-c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                 -c "LABEL flotilla.image=$FL_NAME flotilla.recipe-hash=$FL_HASH")
  for c in "$@"; do changes+=(-c "$c"); done
  fl_tmpdir
  target=$FL_TAG
  if [[ $stopsig != - ]]; then target="flotilla/lab-$FL_NAME-rootfs:$FL_HASH"; fl_clean_image "$target"; fi
  fl_log "docker import ($(du -sh --one-file-system "$root" | cut -f1) rootfs)"
  tar --numeric-owner --xattrs --xattrs-include='*' --one-file-system -C "$root" \
      --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' -c . |
    docker import --message "flotilla lab $FL_NAME rootfs" "${changes[@]}" - "$target" >/dev/null
  [[ $stopsig == - ]] && return 0
  fl_log "docker build FROM the imported image: STOPSIGNAL $stopsig"
  ctx="$FL_TMP/build-context"; mkdir -p "$ctx"
  printf 'FROM %s\nSTOPSIGNAL %s\n' "$target" "$stopsig" >"$ctx/Dockerfile"
  # the legacy builder (no buildx on these machines; DOCKER_BUILDKIT=0 says so explicitly)
  if ! DOCKER_BUILDKIT=0 docker build --force-rm --pull=false -t "$FL_TAG" "$ctx" >"$FL_TMP/build.log" 2>&1; then
    cat "$FL_TMP/build.log" >&2
    fl_die "docker build failed"
  fi
}
