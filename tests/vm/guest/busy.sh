# Keep the IOMMU busy (DMA map benchmark on edu) until the host kills QEMU.
. /vui-lib.sh
edu=$(pci_find 0x1234 0x11e8)
echo dma_map_benchmark >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
echo "VUI-SYNC busy"
spec=$(sed -n 's/.*vui\.bench=\([0-9]*\),\([0-9]*\).*/\1 \2/p' /proc/cmdline)
map-bench ${spec:-60 1}
finish
