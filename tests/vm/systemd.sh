# shellcheck shell=bash
# The `systemd` VM test: the Debian package in a Debian trixie guest that boots with systemd as
# PID 1. Sourced by run.sh (after lib.sh).
#
# The guest root is debootstrapped once and kept as an ext4 image (mkfs.ext4 -d, no loop mounts)
# under $VUI_VM_DIR, named by a hash of everything that goes into it; QEMU boots our kernel with
# it as /dev/vda in snapshot mode, so every run starts from the same clean root. Per run, the 9p
# share (host0, mounted at /mnt/host by the guest's fstab) brings in the .deb built here by
# `cargo deb`, the frontend and guest/systemd-test.sh, which the guest's vui-test.service runs
# once multi-user.target is reached; it prints the usual VUI-RESULT / VUI-DONE lines on ttyS0
# and powers the guest off.
#
# The VMMs in the guest: the test library's vhost-user frontend (tests/src/bin/vui-frontend.rs),
# then a real QEMU (the QEMU of setup-qemu.sh's trixie chroot, shared read-only into the guest
# over 9p and run in a chroot there, as a user `qemu`) booting our kernel with
# guest/systemd-nested.sh, whose virtio-iommu driver must probe the device. QEMU under TCG in a
# TCG guest takes about 4 minutes; VUI_SYSTEMD_QEMU=0 leaves it out.

SYSTEMD_MIRROR=${VUI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SYSTEMD_PKGS="systemd,systemd-sysv,udev,procps"

# systemd_root_populate DIR: make the debootstrapped DIR boot to vui-test.service.
systemd_root_populate() {
    local d=$1
    echo vui-guest >"$d/etc/hostname"
    mkdir -p "$d/mnt/host"
    cat >"$d/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 1
host0 /mnt/host 9p trans=virtio,version=9p2000.L,msize=512000,nofail 0 0
FSTAB
    cat >"$d/etc/systemd/system/vui-test.service" <<'UNIT'
[Unit]
Description=vhost-user-iommu VM test (/mnt/host/test.sh)
After=multi-user.target
RequiresMountsFor=/mnt/host
ConditionPathExists=/mnt/host/test.sh

[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/host/test.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
UNIT
    ln -sf /etc/systemd/system/vui-test.service "$d/etc/systemd/system/multi-user.target.wants/vui-test.service"
    # Nothing else on the console.
    ln -sf /dev/null "$d/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$d/etc/systemd/system/getty@tty1.service"
    chroot "$d" systemd-machine-id-setup >/dev/null 2>&1 || true
    rm -f "$d/etc/resolv.conf"
    chroot "$d" apt-get clean
}

# systemd_image: set SYSTEMD_IMG to the cached guest root image, building it if needed.
systemd_image() {
    local key dir old imgdir
    key=$({ echo "$SYSTEMD_PKGS $SYSTEMD_MIRROR"; declare -f systemd_root_populate; } | sha256sum | cut -c1-16)
    # QEMU runs in the chroot of setup-qemu.sh when there is one: the image must be in there.
    imgdir=${QEMU_ROOT:-$VUI_VM_DIR}/var/vui-systemd-guest
    [ -n "$QEMU_ROOT" ] || imgdir=$VUI_VM_DIR/systemd-guest
    SYSTEMD_IMG=$imgdir/trixie-systemd-$key.img
    [ -f "$SYSTEMD_IMG" ] && return 0
    mkdir -p "$imgdir"
    for old in "$imgdir"/trixie-systemd-*.img; do [ -e "$old" ] && rm -f "$old"; done
    dir=$VUI_VM_DIR/systemd-root.tmp
    if grep -q " $dir/" /proc/mounts; then die "$dir has mounts below it"; fi
    rm -rf "$dir"
    command -v debootstrap >/dev/null || die "debootstrap not found; apt-get install debootstrap"
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found; apt-get install e2fsprogs"
    log "building the systemd guest root (debootstrap trixie + $SYSTEMD_PKGS, a few minutes; cached as $SYSTEMD_IMG)"
    debootstrap --variant=minbase --include="$SYSTEMD_PKGS" trixie "$dir" "$SYSTEMD_MIRROR" \
        >"$VUI_VM_DIR/systemd-debootstrap.log" 2>&1 ||
        die "debootstrap of the systemd guest failed; see $VUI_VM_DIR/systemd-debootstrap.log"
    systemd_root_populate "$dir"
    mkfs.ext4 -q -F -L vui-root -d "$dir" "$SYSTEMD_IMG.tmp" 2G >"$VUI_VM_DIR/systemd-mkfs.log" 2>&1 ||
        die "mkfs.ext4 -d failed; see $VUI_VM_DIR/systemd-mkfs.log"
    mv "$SYSTEMD_IMG.tmp" "$SYSTEMD_IMG"
    rm -rf "$dir"
}

t_systemd() {
    local name=systemd share=$RUN/systemd.share logf=$RUN/systemd.log debs deb
    systemd_image
    command -v cargo >/dev/null && cargo deb --version >/dev/null 2>&1 || {
        report systemd/package FAIL "cargo-deb is not installed: cargo install cargo-deb --locked"
        return
    }
    rm -rf "$share"; mkdir -p "$share"
    # The package as an operator builds it (docs/OPERATORS.md), by default from the debug build
    # the suite has just made (no second, release build; VUI_SYSTEMD_PROFILE=release for the
    # operator's exact package).
    if ! (cd "$VUI_REPO" && cargo deb -p vhost-user-iommu --profile "${VUI_SYSTEMD_PROFILE:-dev}" --output "$share/") \
        >"$RUN/systemd.cargo-deb.log" 2>&1; then
        report systemd/package FAIL "cargo deb failed: $(tail -n 3 "$RUN/systemd.cargo-deb.log" | tr '\n' '|')"
        return
    fi
    debs=("$share"/vhost-user-iommu_*.deb)
    deb=${debs[0]}
    report systemd/package PASS "$(basename "$deb")"
    dpkg-deb -c "$deb" >"$RUN/systemd.deb-contents.txt"
    (cd "$VUI_REPO" && cargo build -q -p vhost-user-iommu-tests --bin vui-frontend) ||
        die "cannot build vui-frontend"
    cp "$VUI_REPO/target/debug/vui-frontend" "$share/"
    cp "$VUI_TESTS_DIR/guest/systemd-test.sh" "$share/test.sh"
    local nested=() mem=1024 timeout=${VUI_SYSTEMD_TIMEOUT:-600}
    if [ "${VUI_SYSTEMD_QEMU:-1}" = 1 ] && [ -z "$QEMU_ROOT" ]; then
        log "systemd: no nested QEMU (it is the QEMU chroot of setup-qemu.sh, and the system QEMU is used; VUI_FORCE_CHROOT=1 makes one)"
    elif [ "${VUI_SYSTEMD_QEMU:-1}" = 1 ]; then
        # The nested VM: our kernel, a busybox initramfs, the VIOT (edu at 00:04.0 behind the
        # IOMMU at 00:03.0), all in the share; QEMU's root is the chroot QEMU runs in here.
        vm_initramfs "$share/nested.cpio.gz" "$VUI_TESTS_DIR/guest/systemd-nested.sh" "$RUN/map-bench"
        cp "$KERNEL" "$share/bzImage"
        "$GLUE" viot --iommu "$IOMMU_BDF" --pci-range 0000:00:00.0-00:1f.7 --out "$share/nested.viot" 2>/dev/null ||
            die "glue viot failed"
        nested=(-virtfs "local,path=/,mount_tag=qemuroot,security_model=none,readonly=on")
        mem=2048 timeout=${VUI_SYSTEMD_TIMEOUT:-1800}
    fi
    log "booting $name (systemd guest, log $logf)"
    qemu_start "$logf" -m "$mem" -kernel "$(qpath "$KERNEL")" \
        -append "console=ttyS0 root=/dev/vda rw quiet panic=-1 systemd.show_status=false systemd.firstboot=off" \
        -drive "file=$(qpath "$SYSTEMD_IMG"),format=raw,if=virtio,snapshot=on" \
        -virtfs "local,path=$(qpath "$share"),mount_tag=host0,security_model=none" "${nested[@]}"
    vm_wait "$name" "$logf" "$share" "$timeout"
}
