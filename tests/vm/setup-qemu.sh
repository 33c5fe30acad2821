#!/usr/bin/env bash
# Set up a QEMU >= 10.2 for the whole-system tests (vhost-user-test-device-pci is user-creatable
# only from 10.2 on), plus busybox-static for the guest initramfs.
#
# Uses the system qemu-system-x86_64 when it is new enough. Otherwise (Debian 12 ships 7.2) it
# creates a Debian trixie minbase chroot and installs qemu-system-x86 from trixie-backports in it.
# Idempotent: a stamp file in the chroot records a finished set-up.
#
# Environment:
#   VUI_VM_DIR        work dir (default /var/tmp/vhost-user-iommu-vm); the chroot is $VUI_VM_DIR/trixie
#   VUI_DEBIAN_MIRROR mirror for debootstrap (default http://deb.debian.org/debian)
#   VUI_FORCE_CHROOT  set to 1 to use the chroot even if the system QEMU is new enough
#
# On success it writes $VUI_VM_DIR/qemu.env (QEMU_ROOT= empty for the system QEMU, else the chroot).
set -euo pipefail

VM_DIR=${VUI_VM_DIR:-/var/tmp/vhost-user-iommu-vm}
ROOT=$VM_DIR/trixie
MIRROR=${VUI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
STAMP=$ROOT/.vui-qemu-ready
MIN_MAJOR=10
MIN_MINOR=2

say() { echo "setup-qemu: $*"; }
die() { echo "setup-qemu: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap/chroot/apt-get need it); rerun with sudo"
mkdir -p "$VM_DIR"

# version_ok "QEMU emulator version X.Y.Z" -> 0 when >= MIN
version_ok() {
    local v major minor
    v=$(sed -n 's/.*version \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' <<<"$1" | head -n1)
    [ -n "$v" ] || return 1
    read -r major minor <<<"$v"
    [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

apt_updated=0
host_install() {
    if [ $apt_updated = 0 ]; then
        say "apt-get update (host)"
        apt-get update -qq || die "apt-get update failed on the host; check network access to the Debian mirror"
        apt_updated=1
    fi
    say "apt-get install $* (host)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed on the host"
}

# busybox-static for the initramfs (a static busybox needs no libraries in the guest).
if ! { [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; } &&
   ! dpkg -s busybox-static >/dev/null 2>&1; then
    host_install busybox-static
fi
command -v cpio >/dev/null || host_install cpio
say "busybox: $(command -v busybox) ($(busybox 2>&1 | head -n1))"

write_env() {
    printf 'QEMU_ROOT=%s\nQEMU_VERSION="%s"\n' "$1" "$2" >"$VM_DIR/qemu.env"
    say "using QEMU ${1:+in chroot $1 }($2); wrote $VM_DIR/qemu.env"
}

if [ "${VUI_FORCE_CHROOT:-0}" != 1 ] && command -v qemu-system-x86_64 >/dev/null; then
    sysver=$(qemu-system-x86_64 --version | head -n1)
    if version_ok "$sysver"; then
        write_env "" "$sysver"
        exit 0
    fi
    say "system QEMU is too old ($sysver); need >= $MIN_MAJOR.$MIN_MINOR, using a trixie chroot"
else
    say "no usable system qemu-system-x86_64; using a trixie chroot"
fi

if [ -f "$STAMP" ] && [ -x "$ROOT/usr/bin/qemu-system-x86_64" ]; then
    ver=$(chroot "$ROOT" qemu-system-x86_64 --version | head -n1) ||
        die "chroot QEMU at $ROOT does not run; delete $ROOT and rerun"
    version_ok "$ver" || die "chroot QEMU is $ver (< $MIN_MAJOR.$MIN_MINOR); delete $ROOT and rerun"
    say "chroot already set up (stamp $STAMP)"
    write_env "$ROOT" "$ver"
    exit 0
fi

command -v debootstrap >/dev/null || host_install debootstrap
if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.vui-debootstrap-done" ]; then
    if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then
        say "removing incomplete chroot $ROOT"
        # Refuse to delete through live mounts.
        if grep -q " $ROOT/" /proc/mounts; then
            die "$ROOT has mounts below it (see /proc/mounts); unmount them and rerun"
        fi
        rm -rf "$ROOT"
    fi
    say "debootstrap --variant=minbase trixie $ROOT $MIRROR (takes a few minutes)"
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >"$VM_DIR/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $VM_DIR/debootstrap.log (a host debootstrap too old to know trixie? then install it from bookworm-backports)"
    touch "$ROOT/.vui-debootstrap-done"
fi

cat >"$ROOT/etc/apt/sources.list.d/trixie-backports.list" <<SRC
deb $MIRROR trixie-backports main
SRC
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

say "installing qemu-system-x86 from trixie-backports in the chroot"
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c '
    set -e
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t trixie-backports \
        qemu-system-x86 qemu-system-data seabios ipxe-qemu
' >"$VM_DIR/chroot-apt.log" 2>&1 || die "apt-get in the chroot failed; see $VM_DIR/chroot-apt.log"

ver=$(chroot "$ROOT" qemu-system-x86_64 --version | head -n1) || die "the chroot's QEMU does not run"
version_ok "$ver" || die "trixie-backports gave $ver, still < $MIN_MAJOR.$MIN_MINOR"
chroot "$ROOT" qemu-system-x86_64 -device help 2>/dev/null | grep -q vhost-user-test-device-pci ||
    die "$ver has no vhost-user-test-device-pci"
touch "$STAMP"
write_env "$ROOT" "$ver"
