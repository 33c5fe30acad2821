# Baseline: QEMU's own virtio-iommu-pci with an edu device behind it.
. /vui-lib.sh
drv=$(dmesg | grep 'virtio_iommu' | head -n 3 | tr '\n' ' ')
check probe "virtio_iommu dmesg: $drv" sh -c "dmesg | grep -q 'virtio_iommu.*input address'"
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu"
g=$(group_of "$edu")
check edu-group "edu in IOMMU group ${g:-none}" test -e "/sys/kernel/iommu_groups/$g/devices/$edu"
iommu=$(readlink "/sys/bus/pci/devices/$edu/iommu" 2>/dev/null)
check edu-iommu-is-virtio "edu's iommu: $iommu" sh -c "echo '$iommu' | grep -q virtio"
finish
