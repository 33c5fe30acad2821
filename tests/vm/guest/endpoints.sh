# The daemon serves only edu's endpoint: every other function stays outside the IOMMU.
. /vui-lib.sh
iommu=$(viommu_pci)
check driver-bound "virtio_iommu bound to the virtio device of ${iommu:-nothing}" test -n "$iommu" || finish
translated_functions "$iommu" >/mnt/host/groups.txt
edu=$(pci_find 0x1234 0x11e8)
check only-edu-translated "behind the IOMMU: $(tr '\n' ' ' </mnt/host/groups.txt)" \
    test "$(cat /mnt/host/groups.txt)" = "$edu"
n=$(ls /sys/bus/pci/devices | grep -c .)
check others-direct "$n function(s), only edu has an IOMMU" \
    sh -c "for d in /sys/bus/pci/devices/*; do [ \${d##*/} = $edu ] || [ ! -e \$d/iommu ] || exit 1; done"
vui_sync groups
finish
