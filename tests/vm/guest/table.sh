# Table mode (guest/linux patches): the guest's virtio-iommu driver negotiated the shared-table
# extension or, on the stock kernel, did not; the DMA API maps edu's buffers (dma_map_benchmark,
# strict or lazy per iommu.strict), then VFIO maps and unmaps through iommufd (vfio-dma).
# Kernel command line: vui.table=1|0 (is table mode expected), vui.mode=strict|lazy.
. /vui-lib.sh
want_table=$(sed -n 's/.*vui\.table=\([01]\).*/\1/p' /proc/cmdline)
mode=$(sed -n 's/.*vui\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
dmesg | grep virtio_iommu >/mnt/host/viommu-dmesg.txt
if [ "$want_table" = 1 ]; then
    check table-negotiated "driver: $(grep -o 'guest-owned tables: on' /mnt/host/viommu-dmesg.txt)" \
        grep -q 'guest-owned tables: on' /mnt/host/viommu-dmesg.txt
else
    check table-not-negotiated "no 'guest-owned tables' in the driver's messages" \
        sh -c '! grep -q "guest-owned tables" /mnt/host/viommu-dmesg.txt'
fi
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu" || finish
echo "$edu" >/mnt/host/edu-bdf
iommu=$(viommu_pci) && translated_functions "$iommu" >/mnt/host/groups.txt
# The DMA API: edu on dma_map_benchmark, in a DMA (strict) or DMA-FQ (lazy) default domain.
gtype=$(cat "/sys/bus/pci/devices/$edu/iommu_group/type")
want_type=DMA-FQ
[ "$mode" = strict ] && want_type=DMA
check group-type "edu's default domain: $gtype (mode $mode)" test "$gtype" = "$want_type"
echo dma_map_benchmark >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
vui_sync before-dma
map-bench 1 1
vui_sync after-dma
echo "$edu" >"/sys/bus/pci/devices/$edu/driver/unbind"
# VFIO through iommufd: an iommufd paging domain (strict: iommufd unmaps synchronously).
echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
drv=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")
check vfio-bound "edu driver: $drv" test "$drv" = vfio-pci
vfio-dma "$edu" /mnt/host
rc=$?
check vfio-dma "vfio-dma exit status $rc" test $rc = 0
finish
