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
    local t0=$SECONDS img blog=$VUI_VM_DIR/kernel-table-build.log
    log "patched guest kernel: guest/linux/build-kernel.sh (from scratch about 30 minutes; log $blog)"
    if ! img=$(VUI_VM_DIR=$VUI_VM_DIR VUI_SHARED_VM=$VUI_SHARED_VM "$VUI_REPO/guest/linux/build-kernel.sh" 2>"$blog"); then
        report table/kernel FAIL "guest/linux/build-kernel.sh failed: $(tail -n 5 "$blog" | tr '\n' '|')"
        return 1
    fi
    cp "$img" "$RUN/bzImage-table" || return 1
    TABLE_KERNEL=$RUN/bzImage-table
    report table/kernel PASS "$img ($((SECONDS - t0)) s)"
}

# table_round NAME KERNEL MODE WANT: one boot of guest/table.sh with KERNEL in MODE (strict or
# lazy) against a fresh daemon that offers the extension; WANT 1 = table mode expected.
table_round() {
    local name=$1 kernel=$2 mode=$3 want=$4 strict=0
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
    boot_guest "$name" "$G/table.sh" 240 "$VFIO_APPEND iommu.strict=$strict vui.table=$want vui.mode=$mode" -- \
        "${QARGS[@]}" -device "edu,addr=$EDU_ADDR"
    GUEST_FILES=()
    unset -f sync_before-dma sync_after-dma sync_attached sync_mapped sync_unmapped
    stop_pid "$DAEMON_PID"
}

t_table() {
    table_kernel || return
    table_round table-strict "$TABLE_KERNEL" strict 1
    table_round table-lazy "$TABLE_KERNEL" lazy 1
    # The stock kernel: the same daemon offers the extension, the driver does not take it.
    table_round table-stock "$KERNEL" lazy 0
}
