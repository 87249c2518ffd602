#!/bin/sh
# Flotilla bake seal (ExecStop of flotilla-bake-seal.service): cleans this builder for its
# image at the shutdown before the capture. Cloud-init state and logs (the next boot is a
# first boot), machine-id (empty: set at first boot), the Engine's identity, the bake CA and
# script, then this unit and script.
cloud-init clean --logs || echo 'flotilla-bake-seal: cloud-init clean --logs failed' >&2
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/docker/key.json /var/lib/docker/engine-id /var/lib/systemd/random-seed
rm -f /usr/local/lib/flotilla/bake-ca.pem /usr/local/lib/flotilla/bake.sh
rm -f /etc/systemd/system/multi-user.target.wants/flotilla-bake-seal.service
rm -f /etc/systemd/system/flotilla-bake-seal.service /usr/local/lib/flotilla/bake-seal.sh
sync
