#!/bin/sh
# Install what the gvisor backend and its tests need on a fresh Debian (12+) machine:
# runsc (gVisor), python3, the Go toolchain and node. Idempotent and non-interactive;
# run as root. Runtimes whose toolchain is missing are simply not offered by the backend.
#
#   sudo .ci/install-gvisor.sh            # everything
#   VULCAN_GVISOR_RUNTIMES="python3" sudo .ci/install-gvisor.sh   # runsc + python only
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-gvisor: must run as root (apt, and runsc applies limits only as root)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
runtimes="${VULCAN_GVISOR_RUNTIMES:-python3 golang-go nodejs}"

missing=""
for pkg in runsc $runtimes; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

# Smoke checks: runsc must run; the backend looks for each toolchain at these paths and
# only under /usr (the only host tree the sandbox sees).
runsc --version | head -n 1
for bin in /usr/local/bin/python3 /usr/bin/python3 /usr/local/go/bin/go /usr/local/bin/go \
    /usr/bin/go /usr/local/bin/node /usr/bin/node /usr/bin/nodejs; do
    if [ -x "$bin" ]; then
        echo "install-gvisor: $bin -> $(readlink -f "$bin")"
    fi
done
echo "install-gvisor: done"
