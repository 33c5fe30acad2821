# The innermost guest of the `systemd` VM test with VUI_SYSTEMD_QEMU=1: booted by QEMU inside
# the systemd guest, attached through the socket-activated service. The stock virtio-iommu
# driver must probe the device and put edu (behind it per the VIOT) in an IOMMU group.
. /vui-lib.sh
drv=$(dmesg | grep 'virtio_iommu' | head -n 3 | tr '\n' ' ')
check probe "virtio_iommu dmesg: $drv" sh -c "dmesg | grep -q 'virtio_iommu.*input address'"
viommu=$(viommu_pci)
check viommu-bound "virtio-iommu at ${viommu:-none}" test -n "$viommu"
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu"
g=$(group_of "$edu")
check edu-group "edu in IOMMU group ${g:-none}" test -e "/sys/kernel/iommu_groups/$g/devices/$edu"
iommu=$(readlink "/sys/bus/pci/devices/$edu/iommu" 2>/dev/null)
check edu-behind-the-daemon "edu's iommu: $iommu" sh -c "echo '$iommu' | grep -q '$viommu/virtio'"
# DMA load while the systemd guest restarts and kills the daemon behind the proxy.
spec=$(sed -n 's/.*vui\.bench=\([0-9]*\),\([0-9]*\).*/\1 \2/p' /proc/cmdline)
if [ -n "$spec" ] && [ -n "$edu" ]; then
    echo dma_map_benchmark >"/sys/bus/pci/devices/$edu/driver_override"
    echo "$edu" >/sys/bus/pci/drivers_probe
    echo "VUI-NESTED-BUSY"
    map-bench $spec
    errs=$(iommu_errors)
    check no-iommu-errors "dmesg: ${errs:-no virtio-iommu error}" test -z "$errs"
fi
finish
