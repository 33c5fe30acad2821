# Guest-side helpers for the test scripts (busybox sh). Source with `. /vui-lib.sh`.
VUI_FAILS=0

# result NAME PASS|FAIL DETAIL...
result() {
    n=$1; v=$2; shift 2
    echo "VUI-RESULT $n $v $*"
    [ "$v" = PASS ] || VUI_FAILS=$((VUI_FAILS + 1))
}

# check NAME DETAIL CMD...: PASS when CMD succeeds.
check() {
    n=$1; d=$2; shift 2
    if "$@"; then result "$n" PASS "$d"; else result "$n" FAIL "$d"; fi
}

# sync NAME [TIMEOUT]: let the host inspect the daemon now; wait for its ack (bounded).
vui_sync() {
    echo "VUI-SYNC $1"
    i=0
    while [ ! -e "/mnt/host/ack-$1" ]; do
        i=$((i + 1))
        if [ $i -gt $((${2:-60} * 10)) ]; then echo "VUI-NOTE no ack for $1"; return 1; fi
        usleep 100000
    done
}

# pci_find VENDOR DEVICE: the first PCI function with these ids (e.g. 0x1234 0x11e8).
pci_find() {
    for d in /sys/bus/pci/devices/*; do
        if [ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ]; then
            basename "$d"; return 0
        fi
    done
    return 1
}

# group_of BDF: the IOMMU group number of a PCI function (fails if none).
group_of() {
    l=$(readlink "/sys/bus/pci/devices/$1/iommu_group") || return 1
    basename "$l"
}

# finish: exit status = number of failed guest checks.
finish() { exit "$VUI_FAILS"; }

# viommu_pci: the PCI function of the (first) virtio-iommu whose virtio driver is virtio_iommu.
viommu_pci() {
    for v in /sys/bus/virtio/devices/*; do
        [ "$(cat "$v/device" 2>/dev/null)" = 0x0017 ] || continue
        [ "$(basename "$(readlink "$v/driver")")" = virtio_iommu ] || continue
        basename "$(readlink -f "$v/..")"
        return 0
    done
    return 1
}

# translated_functions IOMMU_BDF: PCI functions whose iommu is the one at IOMMU_BDF.
translated_functions() {
    for d in /sys/bus/pci/devices/*; do
        l=$(readlink "$d/iommu" 2>/dev/null) || continue
        case "$l" in */"$1"/*) basename "$d" ;; esac
    done
}

# iommu_errors: up to 5 kernel log lines of IOMMU trouble (virtio_iommu messages other than the
# probe's, IOMMU faults or errors, dma_map_benchmark failures), '|'-separated; empty if none.
iommu_errors() {
    dmesg | grep -i -E 'virtio_iommu|iommu.*( fault|error|fail)|dma_map_benchmark.*(fail|error)' |
        grep -v -E 'input address|page mask|domain range|Adding to iommu group|Default domain type|DMA domain TLB' |
        head -n 5 | tr '\n' '|'
}
