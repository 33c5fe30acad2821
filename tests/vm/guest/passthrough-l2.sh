# The nested guest (L2) of the passthrough test: the test VM's QEMU, started by the launcher,
# passes edu through (vfio-pci from iommufd fds); its IOMMU is the daemon, driven by the stock
# virtio-iommu driver. Two boots in the same QEMU (the share /mnt/host keeps a marker):
#   1. vfio-dma proves each step with edu's DMA engine, waiting at each for the test VM's
#      checks of the daemon (VUI-SYNC / ack files in /mnt/host), then keeps edu's DMA going
#      (held mapping, MAP/DMA/UNMAP rounds) while the test VM restarts the daemon; with its
#      mappings live, the guest reboots;
#   2. after the check that no stale domain is left, edu's group goes to an identity domain and
#      edu's DMA at a guest-physical address reaches that page; the test VM then kills QEMU.
. /vui-lib.sh
iommu=$(viommu_pci)
check viommu-driver "virtio_iommu bound to the daemon's device at ${iommu:-none}" test -n "$iommu"
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu" || finish
behind=no
for f in $(translated_functions "$iommu"); do [ "$f" = "$edu" ] && behind=yes; done
check edu-behind-daemon "edu's IOMMU is the daemon's virtio-iommu: $behind" test "$behind" = yes

if [ ! -e /mnt/host/boot1-done ]; then
    echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
    echo "$edu" >/sys/bus/pci/drivers_probe
    drv=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")
    check vfio-bound "edu driver: $drv" test "$drv" = vfio-pci
    vfio-dma "$edu" /mnt/host edu-loop &
    i=0
    while [ ! -e /mnt/host/ack-loop-done ] && [ $i -lt 24000 ] && kill -0 $! 2>/dev/null; do
        i=$((i + 1)); usleep 100000
    done
    check first-boot-steps "vfio-dma went through every step and the DMA loop across the daemon's restarts, and holds its mappings" kill -0 $!
    errs=$(iommu_errors)
    check no-iommu-errors "dmesg after the daemon's restarts: ${errs:-no virtio-iommu error}" test -z "$errs"
    : >/mnt/host/boot1-done
    sync
    echo "VUI-NOTE rebooting with edu's mappings live"
    reboot -f
fi

vui_sync second-boot 120
g=$(group_of "$edu")
echo identity >"/sys/kernel/iommu_groups/$g/type"
check identity-domain "group $g of edu: $(cat "/sys/kernel/iommu_groups/$g/type")" \
    test "$(cat "/sys/kernel/iommu_groups/$g/type")" = identity
vfio-dma "$edu" /mnt/host bypass
check vfio-dma-bypass "vfio-dma bypass exit status $?" false
finish
