# A device added at run time behind the IOMMU (QMP device_add under a root port; the guest
# kernel has no PCI hot-plug driver, so it finds it with a bus rescan) is probed and attached;
# removed from the guest and found again, it is probed and attached again.
. /vui-lib.sh
iommu=$(viommu_pci)
check driver-bound "virtio_iommu bound to the virtio device of ${iommu:-nothing}" test -n "$iommu" || finish
translated_functions "$iommu" >/mnt/host/boot-groups.txt

# wait_edu PRESENT|ABSENT: bounded wait for the added edu (the only one) to come or go.
wait_edu() {
    i=0
    while :; do
        e=$(pci_find 0x1234 0x11e8)
        if [ "$1" = PRESENT ] && [ -n "$e" ] && [ -e "/sys/bus/pci/devices/$e/iommu_group" ]; then return 0; fi
        if [ "$1" = ABSENT ] && [ -z "$e" ]; then return 0; fi
        i=$((i + 1)); [ $i -gt 100 ] && return 1
        usleep 100000
    done
}

check absent-at-boot "no edu before device_add" test -z "$(pci_find 0x1234 0x11e8)"
vui_sync plug
for round in 1 2; do
    echo 1 >/sys/bus/pci/rescan
    check "found-$round" "edu found by a rescan, with an IOMMU group" wait_edu PRESENT
    edu=$(pci_find 0x1234 0x11e8)
    echo "$edu" >/mnt/host/edu-bdf
    check "behind-our-iommu-$round" "edu $edu iommu: $(readlink "/sys/bus/pci/devices/$edu/iommu")" \
        sh -c "readlink /sys/bus/pci/devices/$edu/iommu | grep -q '/$iommu/'"
    vui_sync "found$round"
    echo 1 >"/sys/bus/pci/devices/$edu/remove"
    check "removed-$round" "edu removed from the guest" wait_edu ABSENT
    vui_sync "removed$round"
done
finish
