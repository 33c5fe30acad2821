#!/usr/bin/env bash
# Whole-system (VM) tests of vhost-user-iommu. Prints one PASS/FAIL line per check and a final
# "N passed, M failed"; exits non-zero on any failure. Needs root (chroot, debootstrap).
#   VUI_VM_TESTS="builtin daemon ..."  run only these tests (default: all)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/iommufd.sh"
. "$(dirname "$0")/passthrough.sh"
. "$(dirname "$0")/systemd.sh"
. "$(dirname "$0")/restart.sh"
. "$(dirname "$0")/table.sh"

G=$VUI_TESTS_DIR/guest
# virtio-iommu on x86 has no MSI isolation; iommufd refuses VFIO binds without this.
VFIO_APPEND="iommufd.allow_unsafe_interrupts=1"

t_builtin() {
    boot_guest builtin "$G/builtin.sh" 60 "" -- -device virtio-iommu-pci -device edu
}

# The guest program, built static for the initramfs.
build_guest_programs() {
    command -v gcc >/dev/null || die "gcc not found; apt-get install gcc libc6-dev"
    gcc -static -O2 -Wall -Wextra -o "$RUN/vfio-dma" "$G/vfio-dma.c" ||
        die "cannot build $G/vfio-dma.c (needs gcc and libc6-dev for static linking)"
    gcc -static -O2 -Wall -Wextra -o "$RUN/map-bench" "$G/map-bench.c" ||
        die "cannot build $G/map-bench.c"
}

t_builtin_vfio() {
    GUEST_FILES=("$RUN/vfio-dma")
    boot_guest builtin-vfio "$G/vfio.sh" 90 "$VFIO_APPEND" -- -device virtio-iommu-pci -device edu
    GUEST_FILES=()
}

DAEMON=${VUI_DAEMON:-$VUI_REPO/target/debug/vhost-user-iommu}
GLUE=${VUI_GLUE:-$VUI_REPO/target/debug/vhost-user-iommu-glue}
IOMMU_BDF=0000:00:03.0
EDU_ADDR=0x4

# dcheck NAME CMD ARGS...: a daemon_check.py check (its output line is the detail).
dcheck() {
    local name=$1 out; shift
    if out=$(python3 "$VUI_TESTS_DIR/daemon_check.py" "$@" 2>&1); then
        report "$name" PASS "$out"
    else
        report "$name" FAIL "$out"
    fi
}

# daemon_start NAME ARGS...: run the daemon on the host with its sockets in $RUN (visible to
# QEMU); waits (bounded) for the socket. Sets DSOCK, DCTL, DAEMON_PID.
daemon_start() {
    local name=$1; shift
    DSOCK=$RUN/$name.sock DCTL=$RUN/$name.ctl
    rm -f "$DSOCK" "$DCTL"
    # VUI_DAEMON_CPUS=LIST: the daemon only on these host CPUs.
    local pin=()
    [ -n "${VUI_DAEMON_CPUS:-}" ] && pin=(taskset -c "$VUI_DAEMON_CPUS")
    RUST_LOG=${RUST_LOG:-info} "${pin[@]}" "$DAEMON" --socket "$DSOCK" --control-socket "$DCTL" "$@" \
        >"$RUN/$name.daemon.log" 2>&1 &
    DAEMON_PID=$!
    track_pid "$DAEMON_PID"
    for _ in $(seq 100); do
        [ -S "$DSOCK" ] && [ -S "$DCTL" ] && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.1
    done
    report "$name/daemon-start" FAIL "no sockets after 10 s; log: $(tail -n 3 "$RUN/$name.daemon.log" | tr '\n' '|')"
    return 1
}

# daemon_snapshot NAME: save the daemon's final state (through its own `ctl` CLI) in the run dir.
daemon_snapshot() {
    [ -n "${DCTL:-}" ] && [ -S "$DCTL" ] || return 0
    local c
    for c in status endpoints domains counters faults; do
        echo "== $c"
        timeout 10 "$DAEMON" ctl --control-socket "$DCTL" "$c" 2>&1
    done >"$RUN/$1.daemon-state.txt"
}

# viot_args NAME RANGE...: write $RUN/NAME.viot and set QARGS to the glue's QEMU arguments.
viot_args() {
    local name=$1; shift
    local r ranges=()
    for r in "$@"; do ranges+=(--pci-range "$r"); done
    "$GLUE" viot --iommu "$IOMMU_BDF" "${ranges[@]}" --out "$RUN/$name.viot" 2>/dev/null ||
        die "glue viot failed"
    mapfile -t QARGS < <("$GLUE" qemu-args --socket "$(qpath "$DSOCK")" --viot "$(qpath "$RUN/$name.viot")" \
        --viot-local "$RUN/$name.viot" --memory 512M --iommu-addr "${IOMMU_BDF#0000:00:}" --format lines 2>/dev/null)
    [ "${#QARGS[@]}" -gt 0 ] || die "glue qemu-args failed"
}

# 1. binding, config pass-through, PROBE/ATTACH of the VIOT endpoints, IOMMU groups.
MASK=0x40201000
INPUT=0x0-0xffffffffff
DOMAINS=100-163
t_daemon() {
    daemon_start daemon --page-size-mask "$MASK" --input-range "$INPUT" --domain-range "$DOMAINS" || return
    viot_args daemon 0000:00:00.0-00:1f.7
    local share=$RUN/daemon.share ep="" unk=""
    sync_groups() {
        local bdf
        dcheck daemon/host/config config "$DCTL" "$MASK" "${INPUT%-*}" "${INPUT#*-}"
        dcheck daemon/host/bypass-bit-clear status-bypass "$DCTL" 0
        dcheck daemon/host/domain-range domain-ids "$DCTL" "${DOMAINS%-*}" "${DOMAINS#*-}"
        dcheck daemon/host/endpoints endpoints "$DCTL" "$GLUE" "$RUN/daemon.viot" "$share/groups.txt"
        # One successful PROBE per translated function, and no PROBE/ATTACH failure.
        dcheck daemon/host/probe-per-endpoint counter "$DCTL" probe ok "$(grep -c . "$share/groups.txt")"
        dcheck daemon/host/no-probe-attach-failure counter-failures "$DCTL" attach probe
        timeout 10 "$DAEMON" ctl --control-socket "$DCTL" --json endpoints >"$RUN/daemon.ctl-endpoints.json" 2>&1
        dcheck daemon/host/ctl-cli same-as-socket "$DCTL" endpoints "$RUN/daemon.ctl-endpoints.json"
        # Faults on purpose: edu's DMA domain has nothing at 0xdead000; an endpoint the guest
        # never attached has no domain and, with the bypass bit clear, must not reach memory.
        bdf=$(head -c 64 "$share/edu-bdf" | tr -d '\n')
        ep=$("$GLUE" endpoint --viot "$RUN/daemon.viot" "$bdf" 2>&1) || { report daemon/host/edu-endpoint FAIL "$ep"; ep=""; }
        unk=$(python3 "$VUI_TESTS_DIR/daemon_check.py" unknown-endpoint "$DCTL" "$GLUE" "$RUN/daemon.viot" "$share/groups.txt")
        : >"$share/fault-expect"
        if [ -n "$ep" ]; then
            dcheck daemon/host/translate-unmapped translate "$DCTL" "$ep" 0xdead000 rw fault mapping
            echo "page fault from EP $ep at 0xdead000 [RW]" >>"$share/fault-expect"
        fi
        dcheck daemon/host/translate-unattached translate "$DCTL" "$unk" 0x1000 r fault domain
        echo "domain fault from EP $unk at 0x1000 [R]" >>"$share/fault-expect"
    }
    boot_guest daemon "$G/daemon.sh" 90 "" -- "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    unset -f sync_groups
    [ -n "$ep" ] && dcheck daemon/host/fault-logged-page fault-logged "$DCTL" "$ep" 0xdead000 mapping
    [ -n "$unk" ] && dcheck daemon/host/fault-logged-domain fault-logged "$DCTL" "$unk" 0x1000 domain
    # The guest's view of the config, from its driver's probe messages.
    local d=$RUN/daemon.share/viommu-dmesg.txt bits
    bits=$(python3 -c "import sys; e=int(sys.argv[1],0); print((e).bit_length())" "${INPUT#*-}")
    check daemon/host/guest-page-mask "guest driver: $(grep -o 'page mask: [0x0-9a-f]*' "$d")" \
        grep -q "page mask: $MASK\$" "$d"
    check daemon/host/guest-input-bits "guest driver: $(grep -o 'input address: [0-9]* bits' "$d"), configured end ${INPUT#*-}" \
        grep -q "input address: $bits bits" "$d"
}

# 2. edu on vfio-pci in the guest, DMA buffers mapped through iommufd: the daemon's mapping table
# equals the guest's pages (iova -> guest-physical, permissions) and is back to empty after.
t_vfio() {
    local input_start=0x1000 input_end=0x7fffffffff msi_start=0xfee00000 msi_end=0xfeefffff
    daemon_start vfio --input-range "$input_start-$input_end" --reserved-region "$msi_start-$msi_end:msi" || return
    # Two VIOT ranges with their own endpoint numbering (edu at 00:04.0 becomes 0x2000).
    viot_args vfio 0000:00:00.0-00:02.7@0x1000 0000:00:04.0-00:1f.7@0x2000
    local share=$RUN/vfio.share base=$RUN/vfio.baseline.json ep=""
    sync_attached() {
        local bdf want got
        # The guest's usable IOVA space = the configured input range minus the PROBEd MSI window.
        want=$(printf '%#x %#x\n%#x %#x' "$input_start" "$((msi_start - 1))" "$((msi_end + 1))" "$input_end")
        got=$(head -c 1000 "$share/vfio-ranges.txt")
        check vfio/host/guest-iova-ranges "guest IOAS ranges: $(echo "$got" | tr '\n' ' ')/ expected $(echo "$want" | tr '\n' ' ')" \
            test "$got" = "$want"
        bdf=$(head -c 64 "$share/edu-bdf" | tr -d '\n')
        ep=$("$GLUE" endpoint --viot "$RUN/vfio.viot" "$bdf" 2>&1) || { report vfio/host/endpoint FAIL "$ep"; ep=""; return; }
        dcheck vfio/host/viot-endpoint-numbering endpoints "$DCTL" "$GLUE" "$RUN/vfio.viot" "$share/groups.txt"
        dcheck vfio/host/attached save-domain "$DCTL" "$ep" "$base"
    }
    sync_mapped() {
        [ -n "$ep" ] || return
        dcheck vfio/host/mapped mappings "$DCTL" "$ep" "$base" "$share/vfio-expected.txt"
    }
    sync_unmapped() {
        [ -n "$ep" ] || return
        dcheck vfio/host/unmapped mappings "$DCTL" "$ep" "$base" -
        check vfio/host/empty-after-unmap "baseline of edu's domain: $(head -c 200 "$base")" \
            python3 -c 'import json,sys; sys.exit(len(json.load(open(sys.argv[1]))["mappings"]) != 0)' "$base"
    }
    GUEST_FILES=("$RUN/vfio-dma")
    boot_guest vfio "$G/vfio.sh" 120 "$VFIO_APPEND" -- "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    GUEST_FILES=()
    unset -f sync_attached sync_mapped sync_unmapped
}

# 3. The kernel's DMA map benchmark through the daemon and through QEMU's virtio-iommu-pci.
BENCH_SECONDS=${VUI_BENCH_SECONDS:-4}
BENCH_GRANULE=1
# bench_parse LOG: "map_100ns unmap_100ns map_stddev unmap_stddev" from the guest's VUI-BENCH line.
bench_parse() {
    sed -n 's/^VUI-BENCH map_100ns=\([0-9]*\) map_stddev=\([0-9]*\) unmap_100ns=\([0-9]*\) unmap_stddev=\([0-9]*\) .*/\1 \3 \2 \4/p' "$1" | head -n 1
}
# cpu_mark PID: "TICKS NANOSECONDS", the CPU time of process PID (all threads: utime + stime
# of /proc/PID/stat, in clock ticks) and the wall clock.
cpu_mark() {
    local f
    f=$(cut -d')' -f2- "/proc/$1/stat" 2>/dev/null) || { echo "0 $(date +%s%N)"; return; }
    # After "(comm)": state is field 1, utime field 12, stime field 13.
    awk -v now="$(date +%s%N)" '{ print $12 + $13, now }' <<<"$f"
}
# cpu_per_second "TICKS NS" "TICKS NS": CPU seconds per wall-clock second between two marks.
cpu_per_second() {
    awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        printf "%.3f", ((y[1] - x[1]) / hz) / ((y[2] - x[2]) / 1e9) }'
}
# Seconds the daemon's CPU is measured with the guest idle (booted, its benchmark not started).
BENCH_IDLE_SECONDS=${VUI_BENCH_IDLE_SECONDS:-5}

# bench_daemon NAME ARGS...: one benchmark boot against a fresh daemon started with ARGS; the
# daemon must have served every MAP/UNMAP. Sets BENCH_RESULT (empty on failure): bench_parse's
# fields, then the daemon's CPU per second with the guest idle and during the benchmark.
bench_daemon() {
    local name=$1; shift
    BENCH_RESULT=""
    # shellcheck disable=SC2086 # VUI_BENCH_DAEMON_ARGS: extra daemon options, split on spaces
    daemon_start "$name" "$@" ${VUI_BENCH_DAEMON_ARGS:-} || return
    viot_args "$name" 0000:00:00.0-00:1f.7
    BENCH_IDLE_CPU="" BENCH_LOAD_CPU=""
    # The guest waits for the host here with its devices set up and nothing mapping: the
    # daemon's idle cost. Then the benchmark runs between the two syncs.
    eval "sync_before-bench() {
        local a b
        a=\$(cpu_mark $DAEMON_PID); sleep $BENCH_IDLE_SECONDS; b=\$(cpu_mark $DAEMON_PID)
        BENCH_IDLE_CPU=\$(cpu_per_second \"\$a\" \"\$b\")
        dcheck $name/host/counters-before save-counters \"\$DCTL\" \"\$RUN/$name.counters.json\"
        BENCH_MARK=\$(cpu_mark $DAEMON_PID)
    }"
    eval "sync_after-bench() {
        BENCH_LOAD_CPU=\$(cpu_per_second \"\$BENCH_MARK\" \"\$(cpu_mark $DAEMON_PID)\")
        dcheck $name/host/daemon-served-all counters-delta \"\$DCTL\" \"\$RUN/$name.counters.json\" 1000
    }"
    boot_guest "$name" "$G/bench.sh" "$((BENCH_SECONDS + BENCH_IDLE_SECONDS + 90))" "vui.bench=$BENCH_SECONDS,$BENCH_GRANULE,${BENCH_THREADS:-1}" -- \
        "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    unset -f sync_before-bench sync_after-bench
    BENCH_RESULT=$(bench_parse "$RUN/$name.log")
    [ -z "$BENCH_RESULT" ] || BENCH_RESULT="$BENCH_RESULT ${BENCH_IDLE_CPU:--} ${BENCH_LOAD_CPU:--}"
    stop_pid "$DAEMON_PID"
}

BENCH_ROUNDS=${VUI_BENCH_ROUNDS:-1 2 2:single}
BENCH_REPEAT=${VUI_BENCH_REPEAT:-1}
# The daemon configurations compared with QEMU's device, one "LABEL|OPTIONS" per line
# (VUI_BENCH_VARIANTS overrides them, lines or ';'-separated). The real-time policies are
# measured where this host lets a process use them (root).
bench_variants() {
    if [ -n "${VUI_BENCH_VARIANTS:-}" ]; then
        tr ';' '\n' <<<"$VUI_BENCH_VARIANTS"
        return
    fi
    echo "defaults|"
    "$DAEMON" --help 2>/dev/null | grep -q -- --poll-us || return 0
    echo "--poll-us 0 (kick per request)|--poll-us 0"
    "$DAEMON" --help 2>/dev/null | grep -q -- --worker-sched || return 0
    if chrt -f 10 true 2>/dev/null; then
        echo "--worker-sched fifo:10|--worker-sched fifo:10"
        echo "--poll-us 0 --worker-sched fifo:10|--poll-us 0 --worker-sched fifo:10"
    fi
}

# bench_round THREADS[:single] REPEAT: QEMU's device then every variant, in a guest with THREADS
# vCPUs and benchmark threads (":single": all vCPUs in one host thread, round-robin TCG). Writes
# "LABEL|RESULT" lines to $RUN/bench-ROUND.REPEAT.rows (RESULT from bench_parse; the first
# line is QEMU's device).
bench_round() {
    local round=$1 rep=$2 threads=${1%%:*} prefix=bench label opts n=0
    [ "$round" = 1 ] || prefix=bench${round/:/-}
    [ "$rep" = 1 ] || prefix=$prefix-r$rep
    local rows=$RUN/bench-$round.$rep.rows
    export VUI_SMP=$threads BENCH_THREADS=$threads
    [ "$round" = "${round%:single}" ] || export VUI_TCG_THREAD=single
    GUEST_FILES=("$RUN/map-bench")
    # QEMU's device gets the guest memory a vhost-user device needs too (a shared memfd, which
    # gets no transparent huge pages here), so the two differ by the device only.
    boot_guest "$prefix-builtin" "$G/bench.sh" "$((BENCH_SECONDS + 90))" "vui.bench=$BENCH_SECONDS,$BENCH_GRANULE,$threads" -- \
        -object memory-backend-memfd,id=mem,size=512M,share=on -m 512M -machine q35,memory-backend=mem \
        -device virtio-iommu-pci -device "edu,addr=$EDU_ADDR"
    local builtin
    builtin=$(bench_parse "$RUN/$prefix-builtin.log")
    echo "QEMU built-in virtio-iommu-pci|${builtin:+$builtin - -}" >"$rows"
    while IFS='|' read -r -u 3 label opts; do
        [ -n "$label" ] || continue
        n=$((n + 1))
        # shellcheck disable=SC2086 # OPTIONS: daemon options, split on spaces
        bench_daemon "$prefix-$n" $opts
        echo "vhost-user-iommu $label|$BENCH_RESULT" >>"$rows"
    done 3< <(bench_variants)
    unset VUI_SMP BENCH_THREADS VUI_TCG_THREAD
    GUEST_FILES=()
}

t_bench() {
    local round rep missing
    BENCH_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
    # Repeats are interleaved (every round once, then again), so a change in the host's load
    # falls on every configuration alike.
    for rep in $(seq "$BENCH_REPEAT"); do
        for round in $BENCH_ROUNDS; do
            bench_round "$round" "$rep"
            missing=$(awk -F'|' '$2 == "" { print $1 }' "$RUN/bench-$round.$rep.rows" | tr '\n' ',')
            if [ -n "$missing" ]; then
                report "bench/results-$round" FAIL "missing VUI-BENCH output for: $missing"
                return
            fi
        done
    done
    bench_doc >"$RUN/BENCHMARKS.md"
    report bench/results PASS "$(grep '^| ' "$RUN/BENCHMARKS.md" | tail -n +2 | tr -s ' ' | tr '\n' ' ')"
    if [ -n "${VUI_BENCH_DOC:-}" ]; then cp "$RUN/BENCHMARKS.md" "$VUI_BENCH_DOC"; log "wrote $VUI_BENCH_DOC"; fi
}

# bench_doc: the markdown report of the rows in $RUN/bench-ROUND.REPEAT.rows; each RESULT is
# "MAP_100NS UNMAP_100NS MAP_STDDEV UNMAP_STDDEV" from bench_parse, ratios against the first
# row (QEMU's device) of the same round and repeat.
bench_doc() {
    local profile=debug cargo_flag="" env_prefix=""
    case "$DAEMON" in
        */target/release/*) profile=release cargo_flag="--release " env_prefix="VUI_DAEMON=target/release/vhost-user-iommu " ;;
        */target/debug/*) ;;
        *) profile="custom ($DAEMON)" env_prefix="VUI_DAEMON=$DAEMON " ;;
    esac
    cat <<DOC
# DMA map benchmark: vhost-user-iommu vs QEMU's built-in virtio-iommu-pci

Generated by \`tests/vm/run.sh\` (test \`bench\`) on $(date -u +%Y-%m-%d). Every run boots the same guest
kernel under TCG and binds QEMU's \`edu\` device to the kernel's \`dma_map_benchmark\` driver, which maps
and unmaps one page at a time (N threads in an N-vCPU guest; ${BENCH_SECONDS} s, granule ${BENCH_GRANULE},
32-bit DMA mask, bidirectional) through the guest's virtio-iommu driver. QEMU runs each vCPU in a
busy host thread of its own (MTTCG), except in the rounds marked "1 TCG thread", where all vCPUs
share one host thread (\`-accel tcg,thread=single\`) and so leave the daemon a core. Latencies are the
kernel's averages per dma_map/dma_unmap call (it reports units of 100 ns), in microseconds; the
guest's default domain is DMA-FQ, so unmaps are mostly deferred and batched. Each ratio is against
QEMU's built-in device booted in the same round of the same repeat; every round ran
${BENCH_REPEAT} time(s), interleaved, and the table gives medians with the range over the repeats.
The daemon's CPU per second (all its threads, utime + stime from /proc/PID/stat) is measured for
${BENCH_IDLE_SECONDS} s while the booted guest waits with nothing mapping ("idle"), then over the
benchmark itself. "defaults" is the daemon with no options (adaptive polling up to 50 us,
\`--worker-sched other:100\`).

DOC
    python3 - "$RUN" "$BENCH_REPEAT" $BENCH_ROUNDS <<'PY'
import statistics, sys
run, repeats, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def us(v): return f"{v / 10:.1f}"
def spread(vals):
    m = statistics.median(vals)
    return f"{m:.2f}" if len(vals) == 1 else f"{m:.2f} ({min(vals):.2f}-{max(vals):.2f})"
def cpu(vals):
    vals = [float(v) for v in vals if v != "-"]
    if not vals:
        return "-"
    m = statistics.median(vals)
    return f"{m:.2f}" if len(vals) == 1 else f"{m:.2f} ({min(vals):.2f}-{max(vals):.2f})"
print("| guest threads | configuration | map, us | unmap, us | map ratio | unmap ratio | daemon CPU/s idle | daemon CPU/s benchmark |")
print("|---|---|---:|---:|---|---|---:|---:|")
for rnd in rounds:
    runs = []
    for rep in range(1, repeats + 1):
        rows = []
        for line in open(f"{run}/bench-{rnd}.{rep}.rows"):
            label, _, res = line.rstrip("\n").partition("|")
            f = res.split()
            m, u = int(f[0]), int(f[1])
            idle, load = (f[4], f[5]) if len(f) >= 6 else ("-", "-")
            rows.append((label, m, u, idle, load))
        runs.append(rows)
    threads = rnd.replace(":single", " (1 TCG thread)")
    for i, (label, *_) in enumerate(runs[0]):
        maps = [r[i][1] for r in runs]
        unmaps = [r[i][2] for r in runs]
        mr = [r[i][1] / r[0][1] for r in runs if r[0][1] > 0]
        ur = [r[i][2] / r[0][2] for r in runs if r[0][2] > 0]
        idle = cpu([r[i][3] for r in runs])
        load = cpu([r[i][4] for r in runs])
        print(f"| {threads} | {label} | {us(statistics.median(maps))} | {us(statistics.median(unmaps))} | {spread(mr)} | {spread(ur)} | {idle} | {load} |")
PY
    cat <<DOC

Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores (load average ${BENCH_LOAD} when the runs
started), no KVM (TCG), $(awk '/MemTotal/ {printf "%d GiB RAM", $2/1048576}' /proc/meminfo); host $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r);
${QEMU_VERSION}; guest Linux ${VUI_KERNEL_NAME#bzImage-}, -m 512; daemon: ${profile} build of
commit ${VUI_BENCH_COMMIT:-$(git -C "$VUI_REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}, software backend${VUI_BENCH_DAEMON_ARGS:+, extra options: $VUI_BENCH_DAEMON_ARGS}${VUI_QEMU_CPUS:+; QEMU pinned to host CPU(s) $VUI_QEMU_CPUS}${VUI_DAEMON_CPUS:+; daemon pinned to host CPU(s) $VUI_DAEMON_CPUS}.

Reproduce (as root, from the repository root):

\`\`\`
cargo build ${cargo_flag}-p vhost-user-iommu -p vhost-user-iommu-glue
${env_prefix}${VUI_BENCH_DAEMON_ARGS:+VUI_BENCH_DAEMON_ARGS='$VUI_BENCH_DAEMON_ARGS' }${VUI_QEMU_CPUS:+VUI_QEMU_CPUS=$VUI_QEMU_CPUS }${VUI_DAEMON_CPUS:+VUI_DAEMON_CPUS=$VUI_DAEMON_CPUS }${VUI_BENCH_ROUNDS:+VUI_BENCH_ROUNDS='$VUI_BENCH_ROUNDS' }${VUI_BENCH_VARIANTS:+VUI_BENCH_VARIANTS='$VUI_BENCH_VARIANTS' }VUI_BENCH_REPEAT=${BENCH_REPEAT} VUI_VM_TESTS=bench VUI_BENCH_DOC=docs/BENCHMARKS-dma.md tests/vm/run.sh
\`\`\`

Under TCG every guest instruction is emulated, and without polling each request crosses QEMU's
vhost-user path (guest kick -> QEMU -> eventfd -> daemon -> used ring -> guest spinning on it), so
the absolute numbers say little about KVM hosts; the ratios are what this run measures.
DOC
}

# 4. iommu.passthrough=1 in the guest: ATTACH_F_BYPASS domains in the daemon; with the config
# bypass bit set, an endpoint nobody attached bypasses too.
t_bypass() {
    daemon_start bypass --bypass || return
    viot_args bypass 0000:00:00.0-00:1f.7
    local share=$RUN/bypass.share
    sync_bypass() {
        local bdf ep unk
        dcheck bypass/host/bypass-bit-set status-bypass "$DCTL" 1
        dcheck bypass/host/bypass-domains bypass-domains "$DCTL" "$GLUE" "$RUN/bypass.viot" "$share/groups.txt"
        bdf=$(head -c 64 "$share/edu-bdf" | tr -d '\n')
        if ep=$("$GLUE" endpoint --viot "$RUN/bypass.viot" "$bdf" 2>&1); then
            dcheck bypass/host/translate-attached translate "$DCTL" "$ep" 0x12345000 rw bypass 0x12345000
        else
            report bypass/host/edu-endpoint FAIL "$ep"
        fi
        unk=$(python3 "$VUI_TESTS_DIR/daemon_check.py" unknown-endpoint "$DCTL" "$GLUE" "$RUN/bypass.viot" "$share/groups.txt")
        dcheck bypass/host/translate-unattached translate "$DCTL" "$unk" 0x2000 w bypass 0x2000
    }
    boot_guest bypass "$G/bypass.sh" 90 "iommu.passthrough=1" -- "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    unset -f sync_bypass
}

# 5. QEMU killed (SIGKILL) while the guest maps/unmaps at full speed: the daemon keeps serving
# and a second boot against the same daemon works.
t_reconnect() {
    daemon_start reconnect || return
    viot_args reconnect 0000:00:00.0-00:1f.7
    local share=$RUN/reconnect1.share logf=$RUN/reconnect1.log initrd=$RUN/reconnect1.cpio.gz deadline
    rm -rf "$share"; mkdir -p "$share"
    GUEST_FILES=("$RUN/map-bench")
    vm_initramfs "$initrd" "$G/busy.sh" "${GUEST_FILES[@]}"
    GUEST_FILES=()
    log "booting reconnect1 (killed mid-run; log $logf)"
    qemu_start "$logf" -kernel "$(qpath "$KERNEL")" -initrd "$(qpath "$initrd")" \
        -append "console=ttyS0 quiet panic=-1 vui.bench=60,1" \
        -virtfs "local,path=$(qpath "$share"),mount_tag=host0,security_model=none" \
        "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    deadline=$((SECONDS + 60))
    until grep -aq '^VUI-SYNC busy' "$logf"; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$QEMU_PID" 2>/dev/null; then
            report reconnect/first-boot FAIL "guest never started its DMA load; log $(tail -n 3 "$logf" | tr -d '\r' | tr '\n' '|')"
            stop_pid "$QEMU_PID"
            return
        fi
        sleep 0.2
    done
    dcheck reconnect/host/counters-before save-counters "$DCTL" "$RUN/reconnect.counters.json"
    sleep 2
    dcheck reconnect/host/busy-before-kill counters-delta "$DCTL" "$RUN/reconnect.counters.json" 10
    dcheck reconnect/host/first-connected connection "$DCTL" 1 1
    kill -KILL "$QEMU_PID" 2>/dev/null
    wait "$QEMU_PID" 2>/dev/null
    log "QEMU killed with SIGKILL"
    dcheck reconnect/host/disconnect-seen wait-disconnect "$DCTL" 10
    check reconnect/host/daemon-alive "daemon pid $DAEMON_PID still running after QEMU died" kill -0 "$DAEMON_PID"

    sync_groups() {
        dcheck reconnect/host/second-connected connection "$DCTL" 1 2
        dcheck reconnect/host/endpoints endpoints "$DCTL" "$GLUE" "$RUN/reconnect.viot" "$RUN/reconnect2.share/groups.txt"
    }
    GUEST_FILES=("$RUN/map-bench")
    boot_guest reconnect2 "$G/reconnect.sh" 90 "" -- "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    GUEST_FILES=()
    unset -f sync_groups
}

# 7. The guest reboots (inside the same QEMU) while VFIO mappings are live: the second boot sees
# no stale domain or mapping, and VFIO maps and unmaps again.
t_reboot() {
    daemon_start reboot || return
    viot_args reboot 0000:00:00.0-00:1f.7
    local share=$RUN/reboot.share base=$RUN/reboot.baseline.json ep=""
    sync_attached() {
        local bdf
        bdf=$(head -c 64 "$share/edu-bdf" | tr -d '\n')
        ep=$("$GLUE" endpoint --viot "$RUN/reboot.viot" "$bdf" 2>&1) || { report reboot/host/endpoint FAIL "$ep"; ep=""; return; }
        dcheck reboot/host/attached save-domain "$DCTL" "$ep" "$base"
    }
    sync_mapped() {
        [ -n "$ep" ] && dcheck reboot/host/mapped-before-reboot mappings "$DCTL" "$ep" "$base" "$share/vfio-expected.txt"
    }
    sync_second-boot() {
        dcheck reboot/host/same-connection connection "$DCTL" 1 1
        dcheck reboot/host/no-stale-mappings totals "$DCTL" 0
        dcheck reboot/host/endpoints endpoints "$DCTL" "$GLUE" "$RUN/reboot.viot" "$share/groups.txt"
    }
    GUEST_FILES=("$RUN/vfio-dma")
    QEMU_REBOOT=1 # read by qemu_start (lib.sh)
    boot_guest reboot "$G/reboot.sh" 150 "$VFIO_APPEND" -- "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    # shellcheck disable=SC2034 # read by qemu_start (lib.sh)
    QEMU_REBOOT=0
    GUEST_FILES=()
    unset -f sync_attached sync_mapped sync_second-boot
    check reboot/host/rebooted "guest booted twice in one QEMU" test "$(grep -ac 'VUI-START' "$RUN/reboot.log")" = 2
}

# 8. A device added at run time under a root port (bus 1, in the VIOT) is PROBEd and ATTACHed;
# removed from the guest and found again, it is attached again; no request fails.
t_hotplug() {
    daemon_start hotplug || return
    viot_args hotplug 0000:00:00.0-00:1f.7 0000:01:00.0-01:1f.7
    local share=$RUN/hotplug.share qmp=$RUN/hotplug.qmp
    sync_plug() {
        local out
        out=$(timeout 20 python3 "$VUI_TESTS_DIR/qmp.py" "$qmp" device_add '{"driver": "edu", "id": "hp", "bus": "rp1"}' 2>&1)
        check hotplug/host/device_add "QMP device_add edu on rp1: $out" test $? = 0
    }
    found() {
        local bdf
        bdf=$(head -c 64 "$share/edu-bdf" | tr -d '\n')
        check "hotplug/host/found-at-$1" "guest found the new edu at $bdf" test "$bdf" = 0000:01:00.0
        { cat "$share/boot-groups.txt"; echo "$bdf"; } >"$share/groups-$1.txt"
        dcheck "hotplug/host/attached-$1" endpoints "$DCTL" "$GLUE" "$RUN/hotplug.viot" "$share/groups-$1.txt"
        dcheck "hotplug/host/probes-$1" counter "$DCTL" probe ok "$(($(grep -c . "$share/boot-groups.txt") + $1))"
    }
    sync_found1() { found 1; }
    sync_found2() { found 2; }
    removed() {
        local ep
        ep=$("$GLUE" endpoint --viot "$RUN/hotplug.viot" 0000:01:00.0) || return
        dcheck "hotplug/host/detached-$1" detached "$DCTL" "$ep"
    }
    sync_removed1() { removed 1; }
    sync_removed2() {
        removed 2
        dcheck hotplug/host/no-failed-requests counter-failures "$DCTL" attach detach probe map unmap
    }
    boot_guest hotplug "$G/hotplug.sh" 120 "" -- "${QARGS[@]}" \
        -device pcie-root-port,id=rp1,bus=pcie.0,addr=0x5,chassis=1 \
        -qmp "unix:$(qpath "$qmp"),server=on,wait=off"
    unset -f found removed sync_plug sync_found1 sync_found2 sync_removed1 sync_removed2
}

# 6. A VIOT that covers only edu and a daemon that knows only edu's endpoint (--endpoints): edu
# is translated, nothing else is, and no PROBE fails. (They must agree: Linux aborts IOMMU
# probing of the whole bus at the first PROBE that fails with NOENT, so a VIOT range wider than
# --endpoints leaves every device, edu included, without IOMMU. Seen with Linux 7.3.)
t_endpoints() {
    local share=$RUN/endpoints.share edu_bdf=0000:00:0${EDU_ADDR#0x}.0 ep
    DSOCK=$RUN/endpoints.sock
    viot_args endpoints "$edu_bdf-00:0${EDU_ADDR#0x}.7"
    ep=$("$GLUE" endpoints --viot "$RUN/endpoints.viot") || die "glue endpoints failed"
    daemon_start endpoints --endpoints "$ep" || return
    sync_groups() {
        dcheck endpoints/host/only-edu endpoints "$DCTL" "$GLUE" "$RUN/endpoints.viot" "$share/groups.txt"
        dcheck endpoints/host/probe-noent counter "$DCTL" probe noent 0
        dcheck endpoints/host/probe-ok counter "$DCTL" probe ok 1
    }
    boot_guest endpoints "$G/endpoints.sh" 90 "" -- "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    unset -f sync_groups
}

ALL_TESTS="builtin builtin_vfio daemon vfio bench bypass reconnect live_restart endpoints reboot hotplug iommufd_mock iommufd_vfio passthrough systemd table"
vm_setup
build_guest_programs
for b in "$DAEMON" "$GLUE"; do
    [ -x "$b" ] || die "$b not found; run 'cargo build -p vhost-user-iommu -p vhost-user-iommu-glue' first"
done
for t in ${VUI_VM_TESTS:-$ALL_TESTS}; do
    declare -F "t_$t" >/dev/null || die "unknown test '$t' (known: $ALL_TESTS)"
    DCTL=""
    "t_$t"
    daemon_snapshot "$t"
    vm_cleanup
done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
