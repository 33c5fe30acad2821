# The test VM (L1) of the passthrough test: QEMU's virtio-iommu-pci + edu, edu bound to
# vfio-pci here. QEMU 11.1 comes from the host's QEMU root over 9p (read-only, chrooted with
# proc, sys, dev and a tmpfs on tmp). `vhost-user-iommu-glue launch` opens /dev/iommu and edu's
# cdev, starts the daemon and hands it the fds, and starts QEMU for the nested guest (L2) with
# edu passed through from the same fds and the daemon as its IOMMU. L2's console is relayed
# prefixed with "L2 "; at each of its VUI-SYNC points this script saves the daemon's view
# (control socket) in /mnt/host for the host's checks; L2 reboots once in the same QEMU
# (guest/passthrough-l2.sh); at its last sync point this script SIGKILLs QEMU. Then everything
# the launcher started must be gone and edu free again. While L2's edu DMA loop runs (sync point
# `restarts`), the daemon behind the launcher's proxy is SIGKILLed three times and upgraded
# once (`restarts` below).
. /vui-lib.sh
mkdir -p /lib64 /lib/x86_64-linux-gnu
for l in /bin/*.so*; do
    case "$l" in */ld-linux*) cp "$l" /lib64/ ;; *) cp "$l" /lib/x86_64-linux-gnu/ ;; esac
done
edu=$(pci_find 0x1234 0x11e8)
check edu-present "edu at ${edu:-none}" test -n "$edu" || finish
echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
echo "$edu" >/sys/bus/pci/drivers_probe
drv=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")
check vfio-bound "edu driver: $drv" test "$drv" = vfio-pci || finish

R=/qemu-root F=/files
mkdir -p "$R" "$F"
mount -t 9p -o trans=virtio,version=9p2000.L,ro qemuroot "$R" &&
    mount -t 9p -o trans=virtio,version=9p2000.L,ro files "$F" &&
    mount -t proc proc "$R/proc" && mount -t sysfs sysfs "$R/sys" &&
    mount -o bind /dev "$R/dev" && mount -t tmpfs tmpfs "$R/tmp"
check qemu-root "QEMU root mounted read-only with proc, sys, dev, tmp: $?" test $? = 0 || finish
W=$R/tmp/vui
mkdir -p "$W/share"
cp "$F/bzImage" "$F/l2.cpio.gz" "$W/"
v=$(chroot "$R" qemu-system-x86_64 --version | head -n 1)
check qemu-version "$v" test -n "$v" || finish
# The daemon the launcher starts (and starts again), at a path the upgrade replaces.
B=/tmp/vuibin
mkdir -p "$B"
cp /bin/vhost-user-iommu "$B/vhost-user-iommu"
cat >/tmp/vm.toml <<EOT
run-dir = "$W/run"
qemu-root = "$R"
memory = "256M"
devices = [{ host = "$edu", guest = "00:05.0" }]
EOT
export RUST_LOG=info
# noapic: once, the nested guest's kernel oopsed in setup_IO_APIC (an interrupt during the
# IO-APIC's set-up, TCG inside TCG); the tests need no IO-APIC (virtio uses MSI-X).
vhost-user-iommu-glue launch --config /tmp/vm.toml --daemon "$B/vhost-user-iommu" -- \
    chroot "$R" qemu-system-x86_64 -accel tcg -cpu max -smp 1 -nographic -net none \
    -trace iommufd_cdev_pasid_attach_ioas_hwpt -trace iommufd_cdev_connect_and_bind \
    -kernel /tmp/vui/bzImage -initrd /tmp/vui/l2.cpio.gz \
    -append "console=ttyS0 quiet panic=-1 noapic iommufd.allow_unsafe_interrupts=1" \
    -virtfs local,path=/tmp/vui/share,mount_tag=host0,security_model=none \
    >/tmp/l2.log 2>&1 </dev/null &
lpid=$!
tail -f /tmp/l2.log | sed 's/^/L2 /' &
relay=$!

ctl() { timeout 60 vhost-user-iommu ctl --control-socket "$W/run/control.sock" --json "$@"; }
# save NAME: the daemon's view at L2's sync point NAME, for the host.
save() {
    for c in endpoints domains backend mappings; do ctl "$c" >"/mnt/host/l1-$1-$c.json" 2>&1; done
}
# census NAME: the IOASes and HWPTs in the launcher's iommufd (vfio-dma census), for the host.
census() { vfio-dma "$lpid" "/mnt/host/census-$1.txt" census; }
# restored N: wait (bounded) until the proxy has restored the daemon connection N times.
restored() {
    for _ in $(seq 600); do
        [ "$(grep -c 'daemon connection restored' /tmp/l2.log)" -ge "$1" ] && return 0
        sleep 0.5
    done
    return 1
}
# restarts: while the nested guest's edu DMA loop runs, the daemon is SIGKILLed three times
# (the launcher starts it again, the proxy keeps QEMU's connection) and upgraded once (the
# binary at its path replaced, SIGUSR1 to the launcher). The census and the daemon's view
# before and after, for the host.
restarts() {
    census before
    save restarts-before
    for k in 1 2 3; do
        sleep 8
        dpid=$(cat "$W/run/daemon.pid")
        echo "VUI-NOTE SIGKILL to the daemon (pid $dpid), restart $k"
        kill -KILL "$dpid"
        restored "$k"
        rc=$?
        check "restart-$k" "daemon $dpid SIGKILLed; the launcher started $(cat "$W/run/daemon.pid" 2>/dev/null), the proxy restored the connection" test $rc = 0
    done
    sleep 8
    cp /files/vhost-user-iommu-upgrade "$B/vhost-user-iommu.new" && mv -f "$B/vhost-user-iommu.new" "$B/vhost-user-iommu"
    dpid=$(cat "$W/run/daemon.pid")
    echo "VUI-NOTE upgrade: SIGUSR1 to the launcher (daemon pid $dpid)"
    kill -USR1 "$lpid"
    restored 4
    rc=$?
    npid=$(cat "$W/run/daemon.pid")
    now=$(md5sum <"/proc/$npid/exe" | cut -c1-32) up=$(md5sum </files/vhost-user-iommu-upgrade | cut -c1-32)
    old=$(md5sum </bin/vhost-user-iommu | cut -c1-32)
    check upgrade "daemon $dpid stopped, pid $npid runs ${now:-?} (upgrade $up, first binary $old), the connection restored ($rc)" \
        test $rc = 0 -a "$now" = "$up" -a "$up" != "$old"
    sleep 8
    census after
    save restarts-after
}
seen="" deadline=$(($(date +%s) + 2400))
while kill -0 "$lpid" 2>/dev/null; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
        result launcher-timeout FAIL "the nested guest did not finish in 2400 s"
        kill "$lpid"
        break
    fi
    for s in $(sed -n 's/^VUI-SYNC \([A-Za-z0-9_-]*\)\r*$/\1/p' /tmp/l2.log); do
        case " $seen " in *" $s "*) continue ;; esac
        seen="$seen $s"
        if [ "$s" = restarts ]; then restarts; else save "$s"; fi
        if [ "$s" = loop-done ]; then census loop-done; fi
        touch "$W/share/ack-$s"
        if [ "$s" = bypass ]; then
            qpid=$(pidof qemu-system-x86_64)
            echo "VUI-NOTE killing QEMU ($qpid) with the nested guest's mappings live"
            kill -KILL $qpid
        fi
    done
    sleep 1
done
wait "$lpid"
rc=$?
kill "$relay" 2>/dev/null
sed -n 's/^VUI-RESULT \(.*\)\r*$/VUI-RESULT l2-\1/p' /tmp/l2.log | tr -d '\r'
check launcher-exit "the launcher exited with $rc (QEMU SIGKILLed: 137)" test "$rc" = 137
check daemon-gone "vhost-user-iommu processes left: $(pidof vhost-user-iommu)" test -z "$(pidof vhost-user-iommu)"
check run-dir-empty "left in the run dir: $(ls "$W/run" | tr '\n' ' ')" test -z "$(ls "$W/run")"
vfio-dma "$edu" /tmp bind
check edu-free "edu binds to a new iommufd after the launcher: $?" test $? = 0
cp /tmp/l2.log /mnt/host/l2.log
cp "$W/share/edu-expected.txt" /mnt/host/ 2>/dev/null
finish
