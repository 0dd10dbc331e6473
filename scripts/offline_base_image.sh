#!/usr/bin/env bash
# Builds a local stand-in for python:3.11-slim-bookworm, for machines that reach Debian's mirrors
# and PyPI but not Docker Hub (the `Dockerfile`'s base cannot be pulled there). Then:
#
#   scripts/offline_base_image.sh && BUILD_OPTS=--pull=never scripts/image_smoke.sh
#
# Needs root, debootstrap and podman (`apt-get install debootstrap podman`). Differences from the
# official image: Debian's Python 3.11 (3.11.2) and pip in /usr/bin (symlinked into /usr/local/bin)
# instead of the latest 3.11.x built from source; packages install into dist-packages; one layer.
# On 3.11.2 pip adds async-timeout for redis (not in requirements.lock; not needed on >= 3.11.3).
#
# Hosts seen to need more (in /etc/containers/containers.conf): `runtime = "runc"` under [engine]
# where crun refuses a hybrid cgroup v1/v2 layout, and
# `default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]` under [containers] where
# containers may not raise their limits.
set -euo pipefail

ROOTFS=${1:-$(mktemp -d)/rootfs}
TAG=${TAG:-docker.io/library/python:3.11-slim-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if [ -e "$ROOTFS" ] && [ -n "$(ls -A "$ROOTFS")" ]; then
    echo "$ROOTFS is not empty: give a new directory" >&2
    exit 1
fi
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR"
printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    'path-exclude /usr/share/man/*' > "$ROOTFS/etc/dpkg/dpkg.cfg.d/slim"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mount -t proc proc "$ROOTFS/proc"
mount --bind /dev "$ROOTFS/dev"
trap 'umount "$ROOTFS/dev" "$ROOTFS/proc" 2>/dev/null || true' EXIT
chroot "$ROOTFS" sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get upgrade -y -qq &&
    apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip ca-certificates netbase tzdata'
# a TLS-intercepting proxy's CA (if the host trusts local CAs, the image's pip must too)
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates
fi
rm -f "$ROOTFS/usr/lib/python3.11/EXTERNALLY-MANAGED"
mkdir -p "$ROOTFS/usr/local/bin"
for name in python python3; do ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/$name"; done
for name in pip pip3; do ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/$name"; done
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndefault-timeout = 180\n' > "$ROOTFS/etc/pip.conf"
chroot "$ROOTFS" sh -c 'apt-get clean; rm -rf /var/lib/apt/lists/*'
: > "$ROOTFS/etc/resolv.conf"
umount "$ROOTFS/dev" "$ROOTFS/proc"
trap - EXIT
rm -rf "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*
tar -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG"
rm -rf "$ROOTFS"
echo "tagged $TAG"
