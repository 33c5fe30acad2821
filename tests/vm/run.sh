#!/usr/bin/env bash
# Whole-system (VM) tests of vhost-user-iommu. Prints one PASS/FAIL line per check and a final
# "N passed, M failed"; exits non-zero on any failure. Needs root (chroot, debootstrap).
#   VUI_VM_TESTS="builtin daemon ..."  run only these tests (default: all)
set -uo pipefail
. "$(dirname "$0")/lib.sh"

G=$VUI_TESTS_DIR/guest

t_builtin() {
    boot_guest builtin "$G/builtin.sh" 60 "" -- -device virtio-iommu-pci -device edu
}

ALL_TESTS="builtin"
vm_setup
for t in ${VUI_VM_TESTS:-$ALL_TESTS}; do
    declare -F "t_$t" >/dev/null || die "unknown test '$t' (known: $ALL_TESTS)"
    "t_$t"
    vm_cleanup
done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
