# DMA map benchmark on edu (bound to dma_map_benchmark) through whichever virtio-iommu is present.
. /vui-lib.sh
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu" || finish
echo dma_map_benchmark >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
drv=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")
check bench-bound "edu driver: $drv, group type $(cat "/sys/bus/pci/devices/$edu/iommu_group/type")" \
    test "$drv" = dma_map_benchmark || finish
vui_sync before-bench
# seconds, granule and threads come from the host (kernel command line:
# vui.bench=SECONDS,GRANULE[,THREADS])
spec=$(sed -n 's/.*vui\.bench=\([0-9]*\),\([0-9]*\)\(,\([0-9]*\)\)\{0,1\}.*/\1 \2 \4/p' /proc/cmdline)
# shellcheck disable=SC2086 # spec is "SECONDS GRANULE [THREADS]"
map-bench ${spec:-3 1}
vui_sync after-bench
finish
