# Second boot against a daemon whose previous frontend was killed: the driver works again.
. /vui-lib.sh
iommu=$(viommu_pci)
check driver-bound "virtio_iommu bound to the virtio device of ${iommu:-nothing}" test -n "$iommu" || finish
translated_functions "$iommu" >/mnt/host/groups.txt
edu=$(pci_find 0x1234 0x11e8)
g=$(group_of "$edu")
check edu-group "edu $edu in IOMMU group ${g:-none}" test -e "/sys/kernel/iommu_groups/$g/devices/$edu"
vui_sync groups
# DMA through the IOMMU still works: a short map benchmark.
echo dma_map_benchmark >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
map-bench 1 1
finish
