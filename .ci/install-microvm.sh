#!/bin/sh
# Install what the microvm backend and its tests need on a fresh Debian (12+) machine,
# as root, idempotently:
#   - qemu-system-x86 (QEMU's "microvm" machine) and python3 (the runtime the guest
#     runs from the host's /usr);
#   - Debian's generic kernel (the one linux-image-amd64 depends on), fetched with
#     `apt-get download` and unpacked with `dpkg-deb -x` (nothing under /boot changes),
#     from which it keeps the uncompressed vmlinux (booted directly through PVH) and the
#     virtio/9p modules the guest loads;
#   - the static guest agent (guest/agent), built from this repository.
# Everything lands in $VULCAN_MICROVM_GUEST_DIR (default /var/lib/vulcan/microvm-guest,
# the backend's default `guest_dir`).
#
#   sudo .ci/install-microvm.sh
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-microvm: must run as root (apt, and the backend needs root for cgroups)" >&2
    exit 1
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
guest_dir="${VULCAN_MICROVM_GUEST_DIR:-/var/lib/vulcan/microvm-guest}"
modules="virtio_ring virtio virtio_mmio virtio_console 9pnet 9pnet_virtio netfs fscache 9p"
export DEBIAN_FRONTEND=noninteractive

missing=""
for pkg in qemu-system-x86 python3 xz-utils; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

# The generic kernel package linux-image-amd64 points at (the cloud kernel lacks 9p).
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)"
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg="$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)"
fi
if [ -z "$kpkg" ]; then
    echo "install-microvm: apt offers no linux-image-amd64 kernel" >&2
    exit 1
fi

mkdir -p "$guest_dir/modules"
if [ "$(cat "$guest_dir/kernel-package" 2>/dev/null)" != "$kpkg" ] || [ ! -s "$guest_dir/vmlinux" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q "$kpkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
    deb="$(ls "$work"/*.deb)"
    dpkg-deb -x "$deb" "$work/root"
    vmlinuz="$(ls "$work"/root/boot/vmlinuz-*)"
    # The bzImage holds the kernel XZ-compressed after its setup code: find the XZ
    # magic and unpack from there (what the kernel's scripts/extract-vmlinux does).
    offset="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n 1 | cut -d: -f1)"
    if [ -z "$offset" ]; then
        echo "install-microvm: no XZ payload in $vmlinuz" >&2
        exit 1
    fi
    tail -c +"$((offset + 1))" "$vmlinuz" | xz -dc > "$work/vmlinux" 2>/dev/null || true
    if ! head -c 4 "$work/vmlinux" | grep -q "ELF"; then
        echo "install-microvm: could not extract vmlinux from $vmlinuz" >&2
        exit 1
    fi
    rm -f "$guest_dir"/modules/*.ko
    for m in $modules; do
        ko="$(find "$work/root/lib/modules" -name "$m.ko" | head -n 1)"
        if [ -n "$ko" ]; then
            cp "$ko" "$guest_dir/modules/"
        elif [ -n "$(find "$work/root/lib/modules" -name "$m.ko.*" | head -n 1)" ]; then
            # Compressed modules (newer kernels): the agent loads uncompressed ones.
            src="$(find "$work/root/lib/modules" -name "$m.ko.*" | head -n 1)"
            case "$src" in
                *.xz) xz -dc "$src" > "$guest_dir/modules/$m.ko" ;;
                *) echo "install-microvm: cannot unpack $src" >&2; exit 1 ;;
            esac
        else
            echo "install-microvm: module $m not in $kpkg (built in?); skipped" >&2
        fi
    done
    mv "$work/vmlinux" "$guest_dir/vmlinux"
    echo "$kpkg" > "$guest_dir/kernel-package"
fi

# The guest agent: static (crt-static on the gnu target: no musl target needed), built
# for an explicit --target so these RUSTFLAGS never touch the server's own build.
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
    -p vulcan-agent --target x86_64-unknown-linux-gnu)
install -m 0755 "$target_dir/x86_64-unknown-linux-gnu/release/vulcan-agent" "$guest_dir/vulcan-agent.new"
mv "$guest_dir/vulcan-agent.new" "$guest_dir/vulcan-agent"

qemu-system-x86_64 --version | head -n 1
echo "install-microvm: kernel $kpkg, guest in $guest_dir"
ls -l "$guest_dir" "$guest_dir/modules" | sed 's/^/install-microvm:   /'
echo "install-microvm: done"
