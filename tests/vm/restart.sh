# shellcheck shell=bash
# Whole-system test of a live restart (docs/STATE.md, "Restart"); sourced by run.sh.

# live_daemon BINARY: start the daemon of the live_restart test (its log appended to).
live_daemon() {
    RUST_LOG=${RUST_LOG:-info} "$1" --socket "$LIVE_SOCK" --control-socket "$DCTL" \
        --state-dir "$RUN/live.state" >>"$RUN/live.daemon.log" 2>&1 &
    LIVE_PID=$!
    track_pid "$LIVE_PID"
}

# live_restored N: wait (bounded) until the proxy has restored its daemon connection N times.
live_restored() {
    local want=$1 n
    for _ in $(seq 300); do
        n=$(grep -c 'daemon connection restored' "$RUN/live.proxy.log")
        [ "$n" -ge "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

# live_restart: QEMU attaches the daemon through `vhost-user-iommu proxy`. While the guest
# holds VFIO mappings on one edu and runs the DMA map benchmark on another, the daemon is
# SIGKILLed and restarted three times, then upgraded (SIGTERM, a second build of the binary):
# the benchmark finishes without error, the guest logs no IOMMU error, and the daemon's table
# for the held device equals the guest's mappings before and after.
# upgrade_binary: set UPGRADE to the daemon an upgrade installs (VUI_DAEMON_UPGRADE, else a
# release build, made if it is missing or older than $DAEMON); never $DAEMON itself.
upgrade_binary() {
    UPGRADE=${VUI_DAEMON_UPGRADE:-$VUI_REPO/target/release/vhost-user-iommu}
    if [ -z "${VUI_DAEMON_UPGRADE:-}" ] && { [ ! -x "$UPGRADE" ] || [ "$DAEMON" -nt "$UPGRADE" ]; }; then
        log "building the upgrade: a release build of the daemon"
        (cd "$VUI_REPO" && cargo build --release -q -p vhost-user-iommu --bin vhost-user-iommu) ||
            die "cannot build $UPGRADE"
    fi
    cmp -s "$DAEMON" "$UPGRADE" && die "the upgrade $UPGRADE is the same binary as $DAEMON"
}

t_live_restart() {
    local upgrade
    upgrade_binary
    upgrade=$UPGRADE
    LIVE_SOCK=$RUN/live.sock DCTL=$RUN/live.ctl
    rm -rf "$RUN/live.state" "$RUN/live.daemon.log"
    live_daemon "$DAEMON"
    local psock=$RUN/live-vm.sock share=$RUN/live_restart.share base=$RUN/live.baseline.json ep="" pid
    RUST_LOG=${RUST_LOG:-info} "$DAEMON" proxy --socket "$psock" --backend "$LIVE_SOCK" \
        >"$RUN/live.proxy.log" 2>&1 &
    track_pid $!
    for _ in $(seq 100); do
        [ -S "$psock" ] && [ -S "$DCTL" ] && break
        sleep 0.1
    done
    DSOCK=$psock
    viot_args live 0000:00:00.0-00:1f.7
    sync_attached() {
        local bdf
        bdf=$(head -c 64 "$share/edu-bdf" | tr -d '\n')
        ep=$("$GLUE" endpoint --viot "$RUN/live.viot" "$bdf" 2>&1) || { report live_restart/host/endpoint FAIL "$ep"; ep=""; return; }
        dcheck live_restart/host/attached save-domain "$DCTL" "$ep" "$base"
    }
    sync_mapped() {
        [ -n "$ep" ] && dcheck live_restart/host/mapped-before mappings "$DCTL" "$ep" "$base" "$share/vfio-expected.txt"
    }
    sync_restarts() {
        local k
        for k in 1 2 3; do
            sleep 2
            kill -KILL "$LIVE_PID"
            wait "$LIVE_PID" 2>/dev/null
            live_daemon "$DAEMON"
            check "live_restart/host/sigkill-$k" "daemon SIGKILLed, restarted (pid $LIVE_PID), connection restored by the proxy" \
                live_restored "$k"
        done
        sleep 2
        kill -TERM "$LIVE_PID"
        wait "$LIVE_PID" 2>/dev/null
        live_daemon "$upgrade"
        check live_restart/host/upgrade "daemon stopped (SIGTERM), $upgrade started (pid $LIVE_PID), connection restored" \
            live_restored 4
        sleep 2
    }
    sync_after() {
        [ -n "$ep" ] && dcheck live_restart/host/mapped-after mappings "$DCTL" "$ep" "$base" "$share/vfio-expected.txt"
        check live_restart/host/upgraded-binary "the daemon runs $(readlink "/proc/$LIVE_PID/exe")" \
            test "$(readlink "/proc/$LIVE_PID/exe")" = "$(readlink -f "$upgrade")"
        dcheck live_restart/host/served-after-upgrade counter "$DCTL" map ok 1+
    }
    GUEST_FILES=("$RUN/vfio-dma" "$RUN/map-bench")
    boot_guest live_restart "$G/live-restart.sh" 300 "$VFIO_APPEND vui.bench=${LIVE_BENCH_SECONDS:-40},1" -- \
        "${QARGS[@]}" -device "edu,addr=$EDU_ADDR" -device edu,addr=0x5
    GUEST_FILES=()
    unset -f sync_attached sync_mapped sync_restarts sync_after
    local resumed refused
    resumed=$(grep -c 'journaled state resumed' "$RUN/live.daemon.log")
    check live_restart/host/resumed-4 "journal resumed by $resumed of the 4 restarted daemons" test "$resumed" = 4
    refused=$(grep -E 'not resumed|ERROR' "$RUN/live.daemon.log" "$RUN/live.proxy.log" | head -n 3 | tr '\n' '|')
    check live_restart/host/no-errors "daemon and proxy logs: ${refused:-no error}" test -z "$refused"
    grep -h 'answered from the journal\|restarts at used index\|set-up replayed' "$RUN/live.daemon.log" "$RUN/live.proxy.log" >&2
    daemon_snapshot live_restart
}
