# Guest reboot with live VFIO mappings: the second boot must find a clean device.
. /vui-lib.sh
if [ ! -e /mnt/host/first-boot-done ]; then
    edu=$(pci_find 0x1234 0x11e8)
    echo "$edu" >/mnt/host/edu-bdf
    echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
    echo "$edu" >/sys/bus/pci/drivers_probe
    vfio-dma "$edu" /mnt/host hold &
    i=0
    until [ -e /mnt/host/ack-mapped ]; do
        i=$((i + 1)); [ $i -gt 600 ] && break
        usleep 100000
    done
    check first-boot-mapped "vfio-dma holds its mappings" test -e /mnt/host/ack-mapped
    : >/mnt/host/first-boot-done
    # An immediate reset (no device shutdown in the guest): the daemon hears nothing but the
    # vrings being stopped and restarted by QEMU.
    echo "VUI-NOTE resetting with the mappings live"
    echo b >/proc/sysrq-trigger
    sleep 30
    result reboot FAIL "sysrq reboot returned"
    finish
fi
iommu=$(viommu_pci)
check second-boot-driver-bound "virtio_iommu bound to the virtio device of ${iommu:-nothing}" test -n "$iommu" || finish
translated_functions "$iommu" >/mnt/host/groups.txt
vui_sync second-boot
# The device still maps and unmaps for VFIO after the reboot.
edu=$(pci_find 0x1234 0x11e8)
echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
# (its sync points were acknowledged during the first boot, so it does not stop at them)
vfio-dma "$edu" /mnt/host
rc=$?
check second-boot-vfio "vfio-dma exit status $rc" test $rc = 0
finish
