#!/usr/bin/env bash
# Whole-system (VM) tests of vhost-user-iommu. Prints one PASS/FAIL line per check and a final
# "N passed, M failed"; exits non-zero on any failure. Needs root (chroot, debootstrap).
#   VUI_VM_TESTS="builtin daemon ..."  run only these tests (default: all)
set -uo pipefail
. "$(dirname "$0")/lib.sh"

G=$VUI_TESTS_DIR/guest
# virtio-iommu on x86 has no MSI isolation; iommufd refuses VFIO binds without this.
VFIO_APPEND="iommufd.allow_unsafe_interrupts=1"

t_builtin() {
    boot_guest builtin "$G/builtin.sh" 60 "" -- -device virtio-iommu-pci -device edu
}

# The guest program, built static for the initramfs.
build_guest_programs() {
    command -v gcc >/dev/null || die "gcc not found; apt-get install gcc libc6-dev"
    gcc -static -O2 -Wall -Wextra -o "$RUN/vfio-dma" "$G/vfio-dma.c" ||
        die "cannot build $G/vfio-dma.c (needs gcc and libc6-dev for static linking)"
}

t_builtin_vfio() {
    GUEST_FILES=("$RUN/vfio-dma")
    boot_guest builtin-vfio "$G/vfio.sh" 90 "$VFIO_APPEND" -- -device virtio-iommu-pci -device edu
    GUEST_FILES=()
}

ALL_TESTS="builtin builtin_vfio"
vm_setup
build_guest_programs
for t in ${VUI_VM_TESTS:-$ALL_TESTS}; do
    declare -F "t_$t" >/dev/null || die "unknown test '$t' (known: $ALL_TESTS)"
    "t_$t"
    vm_cleanup
done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
