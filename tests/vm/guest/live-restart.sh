# The daemon behind the proxy is killed and restarted (and upgraded) while this guest keeps
# its IOMMU busy: VFIO mappings held on one edu, the DMA map benchmark on the other.
. /vui-lib.sh
iommu=$(viommu_pci)
check driver-bound "virtio_iommu bound to the virtio device of ${iommu:-nothing}" test -n "$iommu" || finish
edus=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && edus="$edus $(basename "$d")"
done
set -- $edus
check two-edus "edu functions:$edus" test $# = 2 || finish
bench=$1 held=$2
echo "$held" >/mnt/host/edu-bdf
# The held mappings: vfio-dma maps its buffers, reports them (vfio-expected.txt) and holds.
echo vfio-pci >"/sys/bus/pci/devices/$held/driver_override"
echo "$held" >/sys/bus/pci/drivers_probe
vfio-dma "$held" /mnt/host hold &
hold_pid=$!
i=0
while [ ! -e /mnt/host/ack-mapped ] && [ $i -lt 600 ]; do usleep 100000; i=$((i + 1)); done
check held-mapped "vfio-dma holds its mappings" test -e /mnt/host/ack-mapped
# The benchmark, in the background while the host restarts the daemon.
echo dma_map_benchmark >"/sys/bus/pci/devices/$bench/driver_override"
echo "$bench" >/sys/bus/pci/drivers_probe
spec=$(sed -n 's/.*vui\.bench=\([0-9]*\),\([0-9]*\).*/\1 \2/p' /proc/cmdline)
map-bench ${spec:-60 1} >/tmp/bench.out 2>&1 &
bench_pid=$!
vui_sync restarts 300
wait $bench_pid
rc=$?
cat /tmp/bench.out
check bench-finished "map-bench exit status $rc through the restarts" test $rc = 0
check bench-passed "$(grep VUI-RESULT /tmp/bench.out | head -n 1)" grep -q '^VUI-RESULT map-bench PASS' /tmp/bench.out
vui_sync after
kill $hold_pid 2>/dev/null
wait $hold_pid 2>/dev/null
errs=$(iommu_errors)
check no-iommu-errors "guest dmesg: ${errs:-no virtio-iommu error}" test -z "$errs"
finish
