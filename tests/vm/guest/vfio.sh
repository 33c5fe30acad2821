# Bind the edu device to vfio-pci and map/unmap DMA buffers through VFIO cdev + iommufd.
. /vui-lib.sh
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu" || finish
echo "$edu" >/mnt/host/edu-bdf
iommu=$(viommu_pci) && translated_functions "$iommu" >/mnt/host/groups.txt
echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
drv=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")
check vfio-bound "edu driver: $drv" test "$drv" = vfio-pci
vfio-dma "$edu" /mnt/host
rc=$?
check vfio-dma "vfio-dma exit status $rc" test $rc = 0
finish
