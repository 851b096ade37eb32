#!/bin/sh
# Install what the PostgreSQL store's tests need on a fresh Debian (12+) machine: the
# postgresql server binaries the tests start throw-away clusters with (initdb + pg_ctl
# from /usr/lib/postgresql/*/bin, as the unprivileged postgres user the package creates). The package's own cluster is not
# needed: it is stopped where an init system started it.
# Idempotent and non-interactive; run as root.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-postgres: must run as root (apt)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
missing=""
for pkg in postgresql; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
    systemctl stop postgresql || true
fi

ls /usr/lib/postgresql/*/bin/initdb >/dev/null
id postgres >/dev/null
echo "install-postgres: ok ($(ls -d /usr/lib/postgresql/*/bin | tail -n 1))"
