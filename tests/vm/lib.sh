# shellcheck shell=bash
# Helpers for the whole-system tests: kernel, busybox initramfs, QEMU under TCG (system QEMU or
# the chroot made by setup-qemu.sh), guest <-> host synchronisation, result accounting, cleanup.
# Source it from bash with `set -u`; call vm_setup first.
#
# Guest protocol (see guest/vui-lib.sh): the guest prints
#   VUI-RESULT <name> PASS|FAIL <detail>   a guest-side check
#   VUI-SYNC <name>                        "host, check your side now"; it then waits for the
#                                          file ack-<name> in the 9p share (host0 -> /mnt/host)
#   VUI-DONE rc=<n>                        the test script ended (then the guest powers off)
# Guest output is untrusted text: it is only matched, never evaluated.

VUI_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VUI_REPO=$(cd "$VUI_TESTS_DIR/../.." && pwd)
VUI_VM_DIR=${VUI_VM_DIR:-/var/tmp/vhost-user-iommu-vm}
VUI_SHARED_VM=${VUI_SHARED_VM:-$VUI_REPO/../shared/vm}
VUI_KERNEL_NAME=bzImage-7.3.4

PASSED=0
FAILED=0
VUI_PIDS=()

log() { echo "[vm $(date +%H:%M:%S)] $*" >&2; }
die() { echo "vm: ERROR: $*" >&2; exit 2; }

# report NAME PASS|FAIL DETAIL: count and print one result.
report() {
    local name=$1 verdict=$2; shift 2
    if [ "$verdict" = PASS ]; then
        PASSED=$((PASSED + 1)); echo "PASS $name${*:+: $*}"
    else
        FAILED=$((FAILED + 1)); echo "FAIL $name${*:+: $*}"
    fi
}

# check NAME DETAIL CMD...: PASS when CMD succeeds.
check() {
    local name=$1 detail=$2; shift 2
    if "$@"; then report "$name" PASS "$detail"; else report "$name" FAIL "$detail"; fi
}

# Processes we started are killed on exit: TERM, then KILL after a grace period.
track_pid() { VUI_PIDS+=("$1"); }
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.3
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
vm_cleanup() {
    local pid
    for pid in "${VUI_PIDS[@]}"; do stop_pid "$pid"; done
    VUI_PIDS=()
}
trap vm_cleanup EXIT
trap 'vm_cleanup; exit 130' INT TERM

# vm_setup: QEMU (via setup-qemu.sh), kernel, and a run directory RUN that QEMU can see.
vm_setup() {
    if [ ! -f "$VUI_VM_DIR/qemu.env" ] || [ "${VUI_SKIP_SETUP:-0}" != 1 ]; then
        "$VUI_TESTS_DIR/setup-qemu.sh" >&2 || die "setup-qemu.sh failed"
    fi
    # shellcheck disable=SC1091
    . "$VUI_VM_DIR/qemu.env"
    if [ -n "$QEMU_ROOT" ]; then
        RUN=$QEMU_ROOT/vui-run/$$
    else
        RUN=$VUI_VM_DIR/run/$$
    fi
    # Keep the logs of the last run only (directories of runs whose shell is gone).
    local old; for old in "$(dirname "$RUN")"/*; do
        [ -d "$old" ] && ! kill -0 "$(basename "$old")" 2>/dev/null && rm -rf "$old"
    done
    rm -rf "$RUN"; mkdir -p "$RUN"
    KERNEL=$RUN/bzImage
    vm_kernel "$KERNEL"
    BUSYBOX=$(command -v busybox) || die "busybox not found; run tests/vm/setup-qemu.sh"
    log "QEMU: ${QEMU_VERSION}${QEMU_ROOT:+ (chroot $QEMU_ROOT)}; run dir $RUN"
}

# vm_kernel DEST: the shared guest kernel, checked against SHA256SUMS, or a fresh build of it.
vm_kernel() {
    local dest=$1 src=$VUI_SHARED_VM/$VUI_KERNEL_NAME built=$VUI_VM_DIR/kernel/bzImage
    if [ -f "$src" ]; then
        (cd "$VUI_SHARED_VM" && sha256sum --quiet -c SHA256SUMS) ||
            die "$src does not match $VUI_SHARED_VM/SHA256SUMS; rebuild it with build-kernel.sh"
        cp "$src" "$dest"
        return
    fi
    if [ ! -f "$built" ]; then
        [ -x "$VUI_SHARED_VM/build-kernel.sh" ] ||
            die "no guest kernel: neither $src nor $VUI_SHARED_VM/build-kernel.sh exists"
        log "no $src: building the guest kernel (about 25 minutes)"
        "$VUI_SHARED_VM/build-kernel.sh" "$VUI_VM_DIR/kernel" >"$VUI_VM_DIR/kernel-build.log" 2>&1 ||
            die "kernel build failed; see $VUI_VM_DIR/kernel-build.log"
    fi
    cp "$built" "$dest"
}

# qpath HOSTPATH: the same file as QEMU sees it (inside the chroot).
qpath() {
    if [ -n "$QEMU_ROOT" ]; then echo "${1#"$QEMU_ROOT"}"; else echo "$1"; fi
}

# vm_initramfs OUT TESTSCRIPT [FILE...]: busybox initramfs that runs TESTSCRIPT as /test.sh;
# each FILE is copied to /bin (static binaries only: there are no libraries in the guest).
vm_initramfs() {
    local out=$1 script=$2 dir f; shift 2
    dir=$(mktemp -d "$RUN/initramfs.XXXXXX")
    mkdir -p "$dir"/{bin,dev,proc,sys,mnt/host,tmp}
    cp "$BUSYBOX" "$dir/bin/busybox"
    cp "$VUI_TESTS_DIR/guest/init" "$dir/init"
    cp "$VUI_TESTS_DIR/guest/vui-lib.sh" "$dir/vui-lib.sh"
    cp "$script" "$dir/test.sh"
    for f in "$@"; do cp "$f" "$dir/bin/"; done
    chmod +x "$dir/init" "$dir/test.sh"
    (cd "$dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$out" || die "cpio failed"
    rm -rf "$dir"
}

# qemu_start LOG ARGS...: start QEMU (TCG, serial console to LOG) in the background.
# Sets QEMU_PID. QEMU runs inside the chroot when setup-qemu.sh made one.
qemu_start() {
    local logf=$1; shift
    # A -machine or -m given by the caller (the glue's memory-backend= and size) replaces ours.
    # VUI_TCG_THREAD=single: every vCPU in one host thread (round-robin TCG) instead of one
    # busy host thread per vCPU.
    local accel=tcg
    [ -n "${VUI_TCG_THREAD:-}" ] && accel=tcg,thread=$VUI_TCG_THREAD
    local machine=(-machine q35 -accel "$accel") mem=(-m 512) a
    for a in "$@"; do
        case "$a" in
            -machine) machine=(-accel "$accel") ;;
            -m) mem=() ;;
        esac
    done
    # QEMU_REBOOT=1 lets a guest reboot inside the same QEMU process.
    local noreboot=(-no-reboot)
    [ "${QEMU_REBOOT:-0}" = 1 ] && noreboot=()
    local qbase=("${machine[@]}" -cpu max "${mem[@]}" -smp "${VUI_SMP:-1}" -nographic "${noreboot[@]}" -net none)
    echo "qemu-system-x86_64 ${qbase[*]} $*" >"$logf.cmdline"
    # VUI_QEMU_CPUS=LIST: QEMU (all its threads) only on these host CPUs.
    local pin=()
    [ -n "${VUI_QEMU_CPUS:-}" ] && pin=(taskset -c "$VUI_QEMU_CPUS")
    if [ -n "$QEMU_ROOT" ]; then
        # A private mount namespace: /dev and /proc in the chroot vanish with QEMU.
        "${pin[@]}" unshare --mount --propagation private -- sh -c '
            r=$1; shift
            mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" || exit 125
            exec chroot "$r" qemu-system-x86_64 "$@"' vui-qemu "$QEMU_ROOT" "${qbase[@]}" "$@" \
            </dev/null >"$logf" 2>&1 &
    else
        "${pin[@]}" qemu-system-x86_64 "${qbase[@]}" "$@" </dev/null >"$logf" 2>&1 &
    fi
    QEMU_PID=$!
    track_pid "$QEMU_PID"
}

# vm_wait NAME LOG SHARE TIMEOUT: wait for QEMU to exit, at most TIMEOUT seconds. On each new
# "VUI-SYNC x" line, run the host function sync_x (if defined) and create SHARE/ack-x. Then turn
# the guest's VUI-RESULT lines into results prefixed with NAME.
vm_wait() {
    local name=$1 logf=$2 share=$3 timeout=$4 deadline seen="" s
    deadline=$((SECONDS + timeout))
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            report "$name/timeout" FAIL "guest still running after ${timeout}s; killed (log $logf)"
            stop_pid "$QEMU_PID"
            break
        fi
        for s in $(sed -n 's/^VUI-SYNC \([A-Za-z0-9_-]*\)\r*$/\1/p' "$logf" 2>/dev/null); do
            case " $seen " in *" $s "*) continue ;; esac
            seen="$seen $s"
            if declare -F "sync_$s" >/dev/null; then "sync_$s"; fi
            : >"$share/ack-$s"
        done
        sleep 0.2
    done
    wait "$QEMU_PID" 2>/dev/null
    vm_results "$name" "$logf"
}

# vm_results NAME LOG: count the guest's VUI-RESULT lines; a guest that never printed VUI-DONE failed.
vm_results() {
    local name=$1 logf=$2 line n v rest
    while IFS= read -r line; do
        line=${line%$'\r'}
        read -r n v rest <<<"${line#VUI-RESULT }"
        case "$v" in
            PASS|FAIL) report "$name/guest/$n" "$v" "$rest" ;;
            *) report "$name/guest/$n" FAIL "malformed result line: $line" ;;
        esac
    done < <(grep -a '^VUI-RESULT ' "$logf")
    if grep -aq '^VUI-DONE rc=0' "$logf"; then
        report "$name/guest-finished" PASS
    else
        report "$name/guest-finished" FAIL "no 'VUI-DONE rc=0' in $logf; last lines: $(tail -n 5 "$logf" | tr -d '\r' | tr '\n' '|')"
    fi
}

# boot_guest NAME SCRIPT TIMEOUT APPEND -- QEMU-ARGS...: pack an initramfs for SCRIPT (plus the
# files in the array GUEST_FILES), boot, wait, collect. The share dir is $RUN/NAME.share.
boot_guest() {
    local name=$1 script=$2 timeout=$3 append=$4
    [ "${5:-}" = -- ] || die "boot_guest: usage NAME SCRIPT TIMEOUT APPEND -- QEMU-ARGS..."
    shift 5
    local share=$RUN/$name.share logf=$RUN/$name.log initrd=$RUN/$name.cpio.gz
    rm -rf "$share"; mkdir -p "$share"
    vm_initramfs "$initrd" "$script" "${GUEST_FILES[@]}"
    log "booting $name (timeout ${timeout}s, log $logf)"
    qemu_start "$logf" -kernel "$(qpath "$KERNEL")" -initrd "$(qpath "$initrd")" \
        -append "console=ttyS0 quiet panic=-1 $append" \
        -virtfs "local,path=$(qpath "$share"),mount_tag=host0,security_model=none" "$@"
    vm_wait "$name" "$logf" "$share" "$timeout"
}
GUEST_FILES=()
