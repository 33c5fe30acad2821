# The daemon's iommufd backend with a real VFIO device: QEMU's edu behind QEMU's own
# virtio-iommu-pci, bound to vfio-pci here. vui-drive hands /dev/iommu and edu's cdev to the
# daemon, drives it as a vhost-user frontend and checks each step with edu's DMA engine.
. /vui-lib.sh
mkdir -p /lib64 /lib/x86_64-linux-gnu
cp /bin/ld-linux-x86-64.so.2 /lib64/ && cp /bin/libc.so.6 /bin/libgcc_s.so.1 /lib/x86_64-linux-gnu/
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu" || exit 1
echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
drv=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")
check vfio-bound "edu driver: $drv" test "$drv" = vfio-pci
export VHOST_USER_IOMMU_BIN=/bin/vhost-user-iommu RUST_LOG=info
timeout 200 /bin/vui-drive vfio "$edu"
rc=$?
check vui-drive-exit "vui-drive exited with $rc" test "$rc" = 0
exit $VUI_FAILS
