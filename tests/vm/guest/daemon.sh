# The stock virtio-iommu driver against the vhost-user-iommu daemon: binding, config, endpoints.
. /vui-lib.sh
dmesg | grep virtio_iommu >/mnt/host/viommu-dmesg.txt
iommu=$(viommu_pci)
check driver-bound "virtio_iommu bound to the virtio device of ${iommu:-nothing}" test -n "$iommu" || finish
check probe-messages "$(tr '\n' ' ' </mnt/host/viommu-dmesg.txt)" grep -q 'page mask' /mnt/host/viommu-dmesg.txt
translated_functions "$iommu" >/mnt/host/groups.txt
n=$(wc -l </mnt/host/groups.txt)
check endpoints-grouped "$n function(s) behind $iommu: $(tr '\n' ' ' </mnt/host/groups.txt)" test "$n" -gt 0
edu=$(pci_find 0x1234 0x11e8)
g=$(group_of "$edu")
check edu-group "edu $edu in IOMMU group ${g:-none} ($(cat "/sys/kernel/iommu_groups/$g/type" 2>/dev/null))" \
    test -e "/sys/kernel/iommu_groups/$g/devices/$edu"
check edu-behind-our-iommu "edu iommu link: $(readlink "/sys/bus/pci/devices/$edu/iommu")" \
    grep -qx "$edu" /mnt/host/groups.txt
echo "$edu" >/mnt/host/edu-bdf
vui_sync groups
# The host provoked faults through the daemon's translate; each must reach this driver's eventq.
while IFS= read -r want; do
    i=0
    until dmesg | grep -qF "$want"; do
        i=$((i + 1)); [ $i -gt 100 ] && break
        usleep 100000
    done
    check fault-event "dmesg has '$want'" sh -c "dmesg | grep -qF '$want'"
done </mnt/host/fault-expect
finish
