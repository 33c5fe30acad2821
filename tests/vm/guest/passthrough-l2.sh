# The nested guest (L2) of the passthrough test: the test VM's QEMU, started by the launcher,
# passes edu through (vfio-pci from iommufd fds); its IOMMU is the daemon, driven by the stock
# virtio-iommu driver. vfio-dma proves each step with edu's DMA engine and waits for the test
# VM's checks of the daemon (VUI-SYNC / ack files in /mnt/host); it holds at the end, when the
# test VM kills QEMU.
. /vui-lib.sh
iommu=$(viommu_pci)
check viommu-driver "virtio_iommu bound to the daemon's device at ${iommu:-none}" test -n "$iommu"
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu" || finish
behind=no
for f in $(translated_functions "$iommu"); do [ "$f" = "$edu" ] && behind=yes; done
check edu-behind-daemon "edu's IOMMU is the daemon's virtio-iommu: $behind" test "$behind" = yes
echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
drv=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")
check vfio-bound "edu driver: $drv" test "$drv" = vfio-pci
vfio-dma "$edu" /mnt/host edu-hold
check vfio-dma "vfio-dma exit status $?" false
finish
