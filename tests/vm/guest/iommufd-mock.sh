# The daemon's iommufd backend against the kernel's selftest mock (CONFIG_IOMMUFD_TEST):
# vui-drive (tests/src/bin/vui-drive/) hands /dev/iommu to the daemon, drives it as a
# vhost-user frontend and checks every effect with the mock's own ops. Both are dynamically
# linked: their libraries come along in /bin and are put where the loader looks.
. /vui-lib.sh
mkdir -p /lib64 /lib/x86_64-linux-gnu
cp /bin/ld-linux-x86-64.so.2 /lib64/ && cp /bin/libc.so.6 /bin/libgcc_s.so.1 /lib/x86_64-linux-gnu/
check iommufd-present "/dev/iommu exists" test -c /dev/iommu
export VHOST_USER_IOMMU_BIN=/bin/vhost-user-iommu RUST_LOG=info
timeout 150 /bin/vui-drive mock
rc=$?
check vui-drive-exit "vui-drive exited with $rc" test "$rc" = 0
exit $VUI_FAILS
