# Guest booted with iommu.passthrough=1 behind the daemon: identity default domains.
. /vui-lib.sh
iommu=$(viommu_pci)
check driver-bound "virtio_iommu bound to the virtio device of ${iommu:-nothing}" test -n "$iommu" || finish
translated_functions "$iommu" >/mnt/host/groups.txt
edu=$(pci_find 0x1234 0x11e8)
echo "$edu" >/mnt/host/edu-bdf
t=$(cat "/sys/bus/pci/devices/$edu/iommu_group/type" 2>/dev/null)
check identity-domain "edu $edu group type: ${t:-none}" test "$t" = identity
check passthrough-msg "$(dmesg | grep -m1 'Default domain type')" sh -c "dmesg | grep -q 'Default domain type: Passthrough'"
vui_sync bypass
finish
