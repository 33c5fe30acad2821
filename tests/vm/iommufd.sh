# shellcheck shell=bash
# Whole-system tests of the iommufd host backend (docs/IOMMUFD.md); sourced by run.sh.

# guest_dyn_files BIN...: BIN (stripped copies) plus the loader and libraries they need, for
# GUEST_FILES (the guest script moves the libraries to /lib64 and /lib/x86_64-linux-gnu).
guest_dyn_files() {
    local b lib
    GUEST_FILES=()
    for b in "$@"; do
        strip -o "$RUN/$(basename "$b")" "$b" || die "cannot strip $b"
        GUEST_FILES+=("$RUN/$(basename "$b")")
    done
    for lib in $(ldd "$@" | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}' | sort -u); do
        GUEST_FILES+=("$lib")
    done
}

# iommufd_mock: the daemon in the guest, its host devices iommufd selftest mocks, driven and
# checked by vui-drive (MD_CHECK_MAP, MD_CHECK_REFS, object census).
t_iommufd_mock() {
    local drive=${VUI_DRIVE:-$VUI_REPO/target/debug/vui-drive}
    [ -x "$drive" ] || die "$drive not found; run 'cargo build -p vhost-user-iommu-tests --bin vui-drive' first"
    guest_dyn_files "$DAEMON" "$drive"
    boot_guest iommufd_mock "$G/iommufd-mock.sh" 240 "" -- -m 1024
    GUEST_FILES=()
}

# iommufd_vfio: the same daemon in a guest booted with QEMU's virtio-iommu-pci and edu bound to
# vfio-pci: the daemon binds edu's cdev to iommufd, vui-drive checks each ATTACH/MAP/UNMAP/
# replace/DETACH/bypass with edu's DMA engine.
t_iommufd_vfio() {
    local drive=${VUI_DRIVE:-$VUI_REPO/target/debug/vui-drive}
    [ -x "$drive" ] || die "$drive not found; run 'cargo build -p vhost-user-iommu-tests --bin vui-drive' first"
    guest_dyn_files "$DAEMON" "$drive"
    boot_guest iommufd_vfio "$G/iommufd-vfio.sh" 300 "$VFIO_APPEND" -- -m 1024 \
        -device virtio-iommu-pci -device edu
    GUEST_FILES=()
}
