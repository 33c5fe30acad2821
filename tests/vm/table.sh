# shellcheck shell=bash
# VM test `table`: the guest driver of guest/linux (the shared-table extension, docs/PASID.md)
# in a patched guest kernel, against the daemon's software backend, strict and lazy; then the
# stock kernel against the same kind of daemon (the extension offered, not negotiated: the
# fallback to MAP/UNMAP). Sourced by run.sh (uses its daemon_start, viot_args, dcheck).

# table_kernel: $RUN/bzImage-table, the patched kernel (guest/linux/build-kernel.sh: cached
# under $VUI_VM_DIR/kernel by the hash of the patches, the config and the source package).
TABLE_KERNEL=""
table_kernel() {
    [ -n "$TABLE_KERNEL" ] && return 0
    # VUI_TABLE_KERNEL=IMAGE: use this image instead (a kernel built elsewhere with the patches).
    if [ -n "${VUI_TABLE_KERNEL:-}" ]; then
        cp "$VUI_TABLE_KERNEL" "$RUN/bzImage-table" || return 1
        TABLE_KERNEL=$RUN/bzImage-table
        return 0
    fi
    local t0=$SECONDS img blog=$VUI_VM_DIR/kernel-table-build.log
    log "patched guest kernel: guest/linux/build-kernel.sh (from scratch about 20-30 minutes on 2 cores; log $blog)"
    if ! img=$(VUI_VM_DIR=$VUI_VM_DIR VUI_SHARED_VM=$VUI_SHARED_VM "$VUI_REPO/guest/linux/build-kernel.sh" 2>"$blog"); then
        report table/kernel FAIL "guest/linux/build-kernel.sh failed: $(tail -n 5 "$blog" | tr '\n' '|')"
        return 1
    fi
    cp "$img" "$RUN/bzImage-table" || return 1
    TABLE_KERNEL=$RUN/bzImage-table
    report table/kernel PASS "$img ($((SECONDS - t0)) s)"
}

# table_round NAME KERNEL MODE WANT [APPEND]: one boot of guest/table.sh with KERNEL in MODE
# (strict or lazy) against a fresh daemon that offers the extension; WANT 1 = table mode
# expected; APPEND: more kernel command line.
table_round() {
    local name=$1 kernel=$2 mode=$3 want=$4 extra=${5:-} strict=0
    [ "$mode" = strict ] && strict=1
    local input_start=0x1000 input_end=0x7fffffffff msi_start=0xfee00000 msi_end=0xfeefffff
    daemon_start "$name" --pasid-bits 8 --input-range "$input_start-$input_end" \
        --reserved-region "$msi_start-$msi_end:msi" || return
    viot_args "$name" 0000:00:00.0-00:1f.7
    local share=$RUN/$name.share base=$RUN/$name.baseline.json ep="" fmt=none
    [ "$want" = 1 ] && fmt=4
    # The sync_* functions run when the guest prints VUI-SYNC (vm_wait).
    sync_before-dma() {
        local bdf
        dcheck "$name/host/domains" table-domains "$DCTL" "$fmt"
        dcheck "$name/host/counters-before-dma" save-counters "$DCTL" "$RUN/$name.counters.json"
        bdf=$(head -c 64 "$share/edu-bdf" | tr -d '\n')
        ep=$("$GLUE" endpoint --viot "$RUN/$name.viot" "$bdf" 2>&1) || { report "$name/host/endpoint" FAIL "$ep"; ep=""; }
    }
    sync_after-dma() {
        dcheck "$name/host/dma-api-requests" table-dma "$DCTL" "$RUN/$name.counters.json" "$want" "$mode" "$RUN/$name.log"
    }
    sync_attached() {
        [ -n "$ep" ] || return
        dcheck "$name/host/vfio-domain" table-domains "$DCTL" "$fmt"
        [ "$want" = 1 ] || dcheck "$name/host/attached" save-domain "$DCTL" "$ep" "$base"
    }
    sync_mapped() {
        [ -n "$ep" ] || return
        if [ "$want" = 1 ]; then
            dcheck "$name/host/translate-mapped" table-translate "$DCTL" "$ep" "$share/vfio-expected.txt" mapped
        else
            dcheck "$name/host/mapped" mappings "$DCTL" "$ep" "$base" "$share/vfio-expected.txt"
        fi
    }
    sync_unmapped() {
        [ -n "$ep" ] || return
        if [ "$want" = 1 ]; then
            dcheck "$name/host/translate-unmapped" table-translate "$DCTL" "$ep" "$share/vfio-expected.txt" unmapped
            dcheck "$name/host/no-map-requests" counter "$DCTL" map ok 0
            dcheck "$name/host/no-unmap-requests" counter "$DCTL" unmap ok 0
            dcheck "$name/host/attach-table" counter "$DCTL" attach_table ok 1+
        else
            dcheck "$name/host/unmapped" mappings "$DCTL" "$ep" "$base" -
            dcheck "$name/host/no-attach-table" counter "$DCTL" attach_table ok 0
        fi
        dcheck "$name/host/no-failed-requests" counter-failures "$DCTL" attach detach probe map unmap attach_table invalidate
    }
    local KERNEL=$kernel
    GUEST_FILES=("$RUN/vfio-dma" "$RUN/map-bench")
    boot_guest "$name" "$G/table.sh" 240 "$VFIO_APPEND iommu.strict=$strict vui.table=$want vui.mode=$mode $extra" -- \
        "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    GUEST_FILES=()
    unset -f sync_before-dma sync_after-dma sync_attached sync_mapped sync_unmapped
    stop_pid "$DAEMON_PID"
}

t_table() {
    table_kernel || return
    table_round table-strict "$TABLE_KERNEL" strict 1
    table_round table-lazy "$TABLE_KERNEL" lazy 1
    # The same kernel with the driver's switch off: MAP/UNMAP.
    table_round table-param-off "$TABLE_KERNEL" lazy 0 virtio_iommu.table_mode=0
    # The stock kernel: the same daemon offers the extension, the driver does not take it.
    table_round table-stock "$KERNEL" lazy 0
}

# table_bench_row LABEL KERNEL STRICT THREADS EXPECT [DAEMON-OPTION...]: one benchmark boot
# against a fresh daemon offering the extension; EXPECT "table" (no MAP, tables bound) or "map"
# (MAP/UNMAP served). Appends "LABEL|RESULT" to $TB_ROWS.
table_bench_row() {
    local label=$1 kernel=$2 strict=$3 threads=$4 expect=$5 name
    shift 5
    name=tb$threads-$(echo "$label" | tr -c 'a-z0-9\n' '-' | tr -s '-' | head -c 48)
    daemon_start "$name" --pasid-bits 8 "$@" || return
    viot_args "$name" 0000:00:00.0-00:1f.7
    local KERNEL=$kernel
    boot_guest "$name" "$G/bench.sh" "$((BENCH_SECONDS + 120))" \
        "vui.bench=$BENCH_SECONDS,$BENCH_GRANULE,$threads iommu.strict=$strict" -- \
        "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    if [ "$expect" = table ]; then
        dcheck "$name/host/no-map" counter "$DCTL" map ok 0
        dcheck "$name/host/table-bound" counter "$DCTL" attach_table ok 1+
        dcheck "$name/host/invalidates" counter "$DCTL" invalidate ok 1+
    else
        dcheck "$name/host/maps" counter "$DCTL" map ok 1000+
        dcheck "$name/host/no-table" counter "$DCTL" attach_table ok 0
    fi
    echo "$label|$(bench_parse "$RUN/$name.log")" >>"$TB_ROWS"
    stop_pid "$DAEMON_PID"
}

# table_bench: the kernel's DMA map benchmark (edu on dma_map_benchmark, granule 1) in one run:
# QEMU's built-in device, the daemon with the stock driver (MAP/UNMAP), the daemon with the
# patched driver in table mode, strict and lazy; 1 and 2 guest threads
# (VUI_TABLE_BENCH_THREADS). Writes $RUN/BENCHMARKS-table.md (VUI_BENCH_DOC: copied there too).
# Not in ALL_TESTS: a benchmark (about 10 boots), run it by name.
t_table_bench() {
    table_kernel || return
    local threads load
    load=$(uptime)
    for threads in ${VUI_TABLE_BENCH_THREADS:-1 2}; do
        TB_ROWS=$RUN/table-bench-$threads.rows
        : >"$TB_ROWS"
        export VUI_SMP=$threads
        GUEST_FILES=("$RUN/map-bench")
        boot_guest "tb$threads-builtin" "$G/bench.sh" "$((BENCH_SECONDS + 120))" \
            "vui.bench=$BENCH_SECONDS,$BENCH_GRANULE,$threads" -- \
            -object memory-backend-memfd,id=mem,size=512M,share=on -m 512M -machine q35,memory-backend=mem \
            -device virtio-iommu-pci -device "edu,addr=$EDU_ADDR"
        echo "QEMU built-in virtio-iommu-pci, stock driver (lazy)|$(bench_parse "$RUN/tb$threads-builtin.log")" >>"$TB_ROWS"
        boot_guest "tb$threads-builtin-strict" "$G/bench.sh" "$((BENCH_SECONDS + 120))" \
            "vui.bench=$BENCH_SECONDS,$BENCH_GRANULE,$threads iommu.strict=1" -- \
            -object memory-backend-memfd,id=mem,size=512M,share=on -m 512M -machine q35,memory-backend=mem \
            -device virtio-iommu-pci -device "edu,addr=$EDU_ADDR"
        echo "QEMU built-in virtio-iommu-pci, stock driver, strict|$(bench_parse "$RUN/tb$threads-builtin-strict.log")" >>"$TB_ROWS"
        table_bench_row "vhost-user-iommu, stock driver: MAP/UNMAP (lazy)" "$KERNEL" 0 "$threads" map
        table_bench_row "vhost-user-iommu, table mode, strict" "$TABLE_KERNEL" 1 "$threads" table
        # Strict unmaps wait for the INVALIDATE: the request path's latency, which a polling
        # real-time worker shortens (where this host lets the daemon use SCHED_FIFO: root).
        if chrt -f 10 true 2>/dev/null; then
            table_bench_row "vhost-user-iommu, table mode, strict, --poll-us 50 --worker-sched fifo:10" \
                "$TABLE_KERNEL" 1 "$threads" table --poll-us 50 --worker-sched fifo:10
        fi
        table_bench_row "vhost-user-iommu, table mode, lazy" "$TABLE_KERNEL" 0 "$threads" table
        GUEST_FILES=()
        unset VUI_SMP
    done
    {
        echo "| guest threads | configuration | map, us | unmap, us | map vs built-in | unmap vs built-in |"
        echo "|---|---|---:|---:|---:|---:|"
        for threads in ${VUI_TABLE_BENCH_THREADS:-1 2}; do
            python3 - "$RUN/table-bench-$threads.rows" "$threads" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    label, _, res = line.rstrip("\n").partition("|")
    v = res.split()
    rows.append((label, int(v[0]) if v else None, int(v[1]) if v else None))
base = rows[0]
def us(x): return "-" if x is None else f"{x / 10:.1f}"
def ratio(x, b): return "-" if x is None or not b else f"{x / b:.2f}"
for label, m, u in rows:
    print(f"| {sys.argv[2]} | {label} | {us(m)} | {us(u)} | {ratio(m, base[1])} | {ratio(u, base[2])} |")
PY
        done
        echo
        echo "Host load when the run started (uptime): $load"
    } >"$RUN/BENCHMARKS-table.md"
    report table_bench/results PASS "$(grep '^| [0-9]' "$RUN/BENCHMARKS-table.md" | tr -s ' ' | tr '\n' ' ')"
    if [ -n "${VUI_BENCH_DOC:-}" ]; then cp "$RUN/BENCHMARKS-table.md" "$VUI_BENCH_DOC"; log "wrote $VUI_BENCH_DOC"; fi
}
