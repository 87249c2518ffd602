#!/usr/bin/env bash
# host.sh: flotilla/lab-host, the lab's stand-in for an EC2 instance.
# Debian bookworm (debootstrap --variant=minbase) with systemd as PID 1, real cloud-init (22.4.2,
# NoCloud only, as old as Amazon Linux 2023's 22.2) and Docker Engine 26.1.5 (Debian trixie's
# docker.io and docker-cli on bookworm's containerd, runc and libc: as new as AL2023's Engine 25;
# bookworm's own docker.io is 20.10.24, end-of-life since 2023). Run it as a container with the flag set
# in NOTES.md, a volume on /var/lib/docker and a NoCloud seed at /var/lib/cloud/seed/nocloud.
# Usage: bash host.sh [--force|--tag]   (prints the tag as the last line of stdout)
set -Eeuo pipefail
if ! declare -F fl_init >/dev/null; then
  FLOTILLA_IMAGES_DIR="${FLOTILLA_IMAGES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]:-.}")" && pwd)}"
  [[ -f "$FLOTILLA_IMAGES_DIR/common.sh" ]] ||
    { echo "host.sh: no common.sh in $FLOTILLA_IMAGES_DIR (set FLOTILLA_IMAGES_DIR)" >&2; exit 2; }
  # shellcheck source=common.sh
  source "$FLOTILLA_IMAGES_DIR/common.sh"
fi
fl_init host "${BASH_SOURCE[0]:-}" "$@"

SUITE=bookworm
# python3-cffi-backend: debootstrap does not resolve the virtual package python3-cryptography
# needs (python3-cffi-backend-api-*), which leaves cloud-init's python3-cryptography unconfigured.
# netbase: /etc/services and /etc/protocols. No openssh-server: hosts are reached with
# `docker exec`, the agent dials out, and it saves host-key generation at every first boot.
# containerd, runc, tini, adduser, sysvinit-utils: what trixie's docker.io needs, from bookworm.
PACKAGES=systemd,systemd-sysv,dbus,cloud-init,python3-cffi-backend,containerd,runc,tini,adduser,sysvinit-utils,iproute2,iptables,ca-certificates,procps,curl,iputils-ping,netbase,less
# The Engine: trixie's packages, installed into the bookworm root with dpkg (their other
# dependencies — libc6 >= 2.34, libsystemd0, iptables — are bookworm's own).
ENGINE_SUITE=trixie
ENGINE_PACKAGES=(docker.io docker-cli)

# Units that cannot work in a container or that would reach outside the lab on their own.
MASK_UNITS=(
  # timers that download or touch the outside world
  apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
  # interactive first-boot wizard (the empty machine-id makes every container a "first boot")
  systemd-firstboot.service
  # no consoles, no kernel/hardware to manage in a container
  getty.target console-getty.service getty@tty1.service serial-getty@console.service
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
  systemd-udev-trigger.service systemd-udev-settle.service systemd-modules-load.service
  systemd-remount-fs.service systemd-hwdb-update.service systemd-sysctl.service
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount
  dev-hugepages.mount systemd-journald-audit.socket systemd-pstore.service
  e2scrub_all.timer e2scrub_reap.service fstrim.timer
  # Two of cloud-init's four stages (issue 19): each is a Python start-up (~0.9 s of CPU, five
  # hosts booting on two cores) with nothing of the lab's to do. The local stage only finds the
  # NoCloud seed and defers to the network stage (dsmode=net), which finds it by itself
  # (DataSourceNoCloudNet); the config stage's one module, runcmd, runs first in the final stage
  # (below). bootcmd, write_files and runcmd run as before, in the same order.
  cloud-init-local.service cloud-config.service
)

# cloud-init configuration of the image (read after /etc/cloud/cloud.cfg; lists here replace its)
CLOUD_CFG=$(cat <<'EOF'
# Flotilla lab host. The only data source is the NoCloud seed the lab provider bind-mounts at
# /var/lib/cloud/seed/nocloud, so cloud-init never probes a metadata address (169.254.169.254).
datasource_list: [ NoCloud ]
# Docker sets up eth0 (address, routes, DNS); cloud-init must not write a DHCP config.
network: {config: disabled}
# Default user as on Debian's EC2 images ("admin"), but locked, no sudo rule (no sudo in the
# image) and only existing groups: nothing logs in, hosts are reached with `docker exec`.
# (`users: []` fails cloud-init 22.4's schema check: "users: [] is too short".)
system_info:
  default_user:
    name: admin
    lock_passwd: true
    gecos: Flotilla lab admin
    groups: [adm]
    sudo: null
    shell: /bin/bash
preserve_hostname: false
manage_etc_hosts: false
# Modules kept: local ones only. Dropped, and why:
#   locale            (no `locales` package; /etc/default/locale says C.UTF-8)
#   apt-configure, apt-pipelining, package-update-upgrade-install, ntp, phone-home,
#   ssh-import-id, landscape, puppet, chef, salt-minion, mcollective, ubuntu-advantage, snap
#                     (reach the network)
#   growpart, resizefs, disk_setup, mounts, seed_random
#                     (no block device of its own, no kernel to feed)
#   ssh, ssh-authkey-fingerprints, keys-to-console, set-passwords
#                     (no sshd in the image; see host.sh)
#   rsyslog, byobu, keyboard, grub-dpkg, timezone, install-hotplug, disable-ec2-metadata
#                     (nothing to do here)
cloud_init_modules:
  - bootcmd
  - write-files
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - ca-certs
  - users-groups
# The config stage is masked (MASK_UNITS): runcmd runs first in the final stage, where the
# script it writes runs (scripts-user) as it would after the config stage.
cloud_config_modules: []
cloud_final_modules:
  - runcmd
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - final-message
  - power-state-change
EOF
)

build() {
  fl_tmpdir
  local root="$FL_TMP/rootfs" mirror u
  mirror=$(fl_debian_mirror)
  fl_ensure_host_tool debootstrap debootstrap
  mkdir -p "$FLOTILLA_CACHE_DIR/debs/debootstrap-$SUITE"

  fl_log "debootstrap $SUITE minbase from $mirror"
  debootstrap --variant=minbase --merged-usr --components=main --include="$PACKAGES" \
    --cache-dir="$FLOTILLA_CACHE_DIR/debs/debootstrap-$SUITE" \
    "$SUITE" "$root" "$mirror" >"$FL_TMP/debootstrap.log" 2>&1 || {
      tail -n 30 "$FL_TMP/debootstrap.log" >&2; fl_die "debootstrap failed (log above)"; }

  fl_log "checking dpkg state"
  if [[ -n "$(chroot "$root" dpkg --audit 2>&1)" ]]; then
    fl_log "unconfigured packages left by debootstrap; dpkg --configure -a"
    chroot "$root" dpkg --audit >&2 || true
    chroot "$root" dpkg --configure -a >&2
    [[ -z "$(chroot "$root" dpkg --audit 2>&1)" ]] || fl_die "dpkg still reports broken packages"
  fi

  fl_log "Docker Engine from $ENGINE_SUITE: ${ENGINE_PACKAGES[*]}"
  local pkg debs=()
  mkdir -p "$root/tmp/engine-debs"
  for pkg in "${ENGINE_PACKAGES[@]}"; do
    cp "$(fl_deb "$ENGINE_SUITE" "$pkg")" "$root/tmp/engine-debs/"
    debs+=("/tmp/engine-debs/$(basename "$(fl_deb "$ENGINE_SUITE" "$pkg")")")
  done
  # In the chroot no init runs: the maintainer scripts enable the units and start nothing.
  chroot "$root" dpkg -i "${debs[@]}" >"$FL_TMP/engine-dpkg.log" 2>&1 || {
    tail -n 30 "$FL_TMP/engine-dpkg.log" >&2; fl_die "installing the Engine failed (log above)"; }
  rm -rf "$root/tmp/engine-debs"
  [[ -z "$(chroot "$root" dpkg --audit 2>&1)" ]] || fl_die "dpkg reports broken packages after the Engine"

  fl_log "configuring the image"
  # apt sources inside the guest: the same mirror (used only if user-data asks for packages)
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb ${FLOTILLA_DEBIAN_SECURITY_MIRROR} $SUITE-security main
EOF
  # 99_: after Debian's 90_dpkg.cfg (which lists every data source); ds-identify takes the last
  printf '%s\n' "$CLOUD_CFG" >"$root/etc/cloud/cloud.cfg.d/99_flotilla_lab.cfg"

  for u in "${MASK_UNITS[@]}"; do ln -sfn /dev/null "$root/etc/systemd/system/$u"; done
  # docker.service must start at boot (debootstrap's postinst already enables it; make sure)
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
  ln -sfn /lib/systemd/system/docker.service "$root/etc/systemd/system/multi-user.target.wants/docker.service"
  ln -sfn /lib/systemd/system/containerd.service "$root/etc/systemd/system/multi-user.target.wants/containerd.service"
  # the lab container is not a VM: boot to multi-user, no graphical target
  ln -sfn /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
  # journald: keep the log in memory (the container's disk is the Docker layer)
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\n' >"$root/etc/systemd/journald.conf.d/flotilla-lab.conf"

  # PID 1 wrapper: writable cgroup mounts in a private cgroup namespace, then systemd (NOTES.md)
  cat >"$root/usr/local/sbin/flotilla-lab-init" <<'INIT'
#!/bin/sh
# PID 1 of a Flotilla lab host container; prepares /sys/fs/cgroup, then systemd takes over.
# Run with `--cgroupns=private` and NO bind mount of the machine's /sys/fs/cgroup (binding it
# lets this container's systemd remount the machine's cgroup tmpfs read-only and add directories
# to it, and puts the inner Engine's containers outside this container's cgroup).
#
# 1. Docker mounts this container's own cgroup subtrees read-only; systemd and the inner dockerd
#    must create cgroups there. A *bind* remount changes only this container's mount points.
while read -r _id _parent _dev _root mnt opts _rest; do
  case $mnt in /sys/fs/cgroup | /sys/fs/cgroup/*) ;; *) continue ;; esac
  case ",$opts," in
    *,ro,*) mount -o remount,bind,rw "$mnt" || echo "flotilla-lab-init: cannot make $mnt writable" >&2 ;;
  esac
done </proc/self/mountinfo
# 2. Not done on purpose: controllers the machine does not mount (here hugetlb, perf_event,
#    net_cls,net_prio) are mounted by systemd from their real root, so the inner Engine's cgroups
#    in them sit outside this container and, if the container is killed while inner containers
#    run, stay behind empty (invisible on the machine). Hiding those controllers with a tmpfs
#    placeholder stops that, but then containerd cannot load any inner container's cgroup:
#    `docker stats` shows 0B and OOMKilled is never set. See NOTES.md.
exec /sbin/init "$@"
INIT
  chmod 0755 "$root/usr/local/sbin/flotilla-lab-init"

  # per-instance identity is made at first boot, never baked
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id" "$root/etc/docker/key.json"
  printf 'localhost\n' >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  printf 'LANG=C.UTF-8\n' >"$root/etc/default/locale"

  # small: no apt lists, caches, docs or man pages (copyright files stay)
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-flotilla-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF

  local v_ci v_docker
  v_ci=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Version}' cloud-init)
  v_docker=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Version}' docker.io)
  fl_log "cloud-init $v_ci, docker.io $v_docker"

  fl_commit_rootfs "$root" SIGRTMIN+3 'ENV container=docker' 'CMD ["/usr/local/sbin/flotilla-lab-init"]' \
    "LABEL flotilla.cloud-init-version=$v_ci flotilla.docker-version=$v_docker flotilla.debian-suite=$SUITE"
}

fl_main build
