#!/bin/sh
# Install what the OCI image tests need on a fresh Debian (12+) machine: a real registry
# (docker-registry, the CNCF distribution registry), umoci to build test images,
# skopeo to push them, and busybox-static as the images' content. runsc itself comes
# from install-gvisor.sh; python3 makes the bcrypt hash of the auth test registry.
# Idempotent and non-interactive; run as root.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-oci: must run as root (apt)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
missing=""
for pkg in docker-registry umoci skopeo busybox-static ca-certificates python3; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

# The package may start its own registry on :5000 where an init system runs; the
# tests start their own on free loopback ports and do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl stop docker-registry || true
fi

docker-registry --version 2>/dev/null | head -n 1 || true
umoci --version | head -n 1
skopeo --version | head -n 1
/bin/busybox | head -n 1
echo "install-oci: done"
