#!/bin/sh
# Build the guest kernel with the table-mode patches (guest/linux/patches) applied, or find it
# in the cache. Prints the path of the bzImage on stdout (progress on stderr).
#
#   guest/linux/build-kernel.sh            # the image, built if needed
#   guest/linux/build-kernel.sh --key      # only the cache key
#
# Source: Debian's linux-source-7.3 package (trixie-backports, fetched with apt like
# ../shared/vm/build-kernel.sh does), configured with ../shared/vm/kernel-7.3.4.config. The
# image is cached under $VUI_VM_DIR/kernel/table-KEY/ (default VUI_VM_DIR
# /var/tmp/vhost-user-iommu-vm), KEY a hash of the patches, the config and the source package
# version; $VUI_SHARED_VM/bzImage-7.3.4-table-KEY is used instead when present. The build tree
# ($VUI_VM_DIR/kernel/table-tree) is kept, so a changed patch rebuilds only what it touches.
# A fresh tree is copied from VUI_KERNEL_SEED (a tree of the same source already built, default
# $VUI_VM_DIR/kernel/base-src when it holds a built vmlinux) or unpacked from the package.
# Needs root for apt on a machine without the package; about 25-35 minutes from scratch on 2
# cores, a minute or two for a patch change.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
vmdir=${VUI_VM_DIR:-/var/tmp/vhost-user-iommu-vm}
shared=${VUI_SHARED_VM:-$repo/../shared/vm}
config=$shared/kernel-7.3.4.config
kdir=$vmdir/kernel
tree=$kdir/table-tree
say() { echo "build-kernel: $*" >&2; }

[ -f "$config" ] || { say "no $config"; exit 1; }
mkdir -p "$kdir"
exec 9>"$kdir/table.lock"
flock 9

# The source package: one already downloaded, else the candidate from trixie-backports.
deb=$(ls "$kdir"/linux-source-7.3_*_all.deb 2>/dev/null | sort | tail -n 1)
if [ -z "$deb" ]; then
    if ! apt-cache show linux-source-7.3 >/dev/null 2>&1; then
        cat >/etc/apt/sources.list.d/trixie-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        printf 'Package: *\nPin: release n=trixie-backports\nPin-Priority: 50\n' \
            >/etc/apt/preferences.d/trixie-backports
        apt-get update -q >&2
    fi
    (cd "$kdir" && apt-get download -q linux-source-7.3 >&2)
    deb=$(ls "$kdir"/linux-source-7.3_*_all.deb | sort | tail -n 1)
fi
debname=$(basename "$deb")

patches=$(ls "$here"/patches/0*.patch | grep -v '/0000-')
key=$( { echo "$debname"; cat "$config"; for p in $patches; do cat "$p"; done; } |
    sha256sum | cut -c1-16)
if [ "${1:-}" = --key ]; then echo "$key"; exit 0; fi

for img in "$shared/bzImage-7.3.4-table-$key" "$kdir/table-$key/bzImage"; do
    if [ -f "$img" ]; then say "cached: $img"; echo "$img"; exit 0; fi
done

start=$(date +%s)
# Take the old patches out of a kept tree; start over if it is from another source or broken.
if [ -d "$tree" ]; then
    if [ "$(cat "$tree/.vui-deb" 2>/dev/null)" != "$debname" ] ||
        { [ -f "$tree/.vui-applied.patch" ] &&
            ! patch -d "$tree" -p1 -R -s --dry-run <"$tree/.vui-applied.patch" >/dev/null; }; then
        say "build tree does not match $debname: starting over"
        rm -rf "$tree"
    elif [ -f "$tree/.vui-applied.patch" ]; then
        patch -d "$tree" -p1 -R -s <"$tree/.vui-applied.patch"
        rm "$tree/.vui-applied.patch"
    fi
fi
if [ ! -d "$tree" ]; then
    seed=${VUI_KERNEL_SEED:-$kdir/base-src}
    if [ -f "$seed/vmlinux" ] && [ -f "$seed/.config" ] &&
        grep -q '^VERSION = 7$' "$seed/Makefile" && grep -q '^PATCHLEVEL = 3$' "$seed/Makefile"; then
        say "copying the built tree $seed"
        cp -a "$seed" "$tree.tmp"
        rm -f "$tree.tmp/.vui-applied.patch"
    else
        say "unpacking $debname"
        rm -rf "$tree.tmp" "$kdir/table-deb"
        dpkg -x "$deb" "$kdir/table-deb"
        mkdir -p "$tree.tmp"
        tar -C "$tree.tmp" --strip-components=1 -xf "$kdir"/table-deb/usr/src/linux-source-7.3.tar.xz
        rm -rf "$kdir/table-deb"
    fi
    echo "$debname" >"$tree.tmp/.vui-deb"
    mv "$tree.tmp" "$tree"
fi

cd "$tree"
cmp -s "$config" .config || cp "$config" .config
for p in $patches; do cat "$p"; done >.vui-applied.patch.new
patch -p1 -s --forward --dry-run <.vui-applied.patch.new >&2 ||
    { say "the patches do not apply to $debname"; exit 1; }
patch -p1 -s --forward <.vui-applied.patch.new
mv .vui-applied.patch.new .vui-applied.patch
say "building in $tree (log: make output below)"
make -s olddefconfig >&2
nice make -j"$(nproc)" bzImage >&2
mkdir -p "$kdir/table-$key"
cp arch/x86/boot/bzImage "$kdir/table-$key/bzImage.tmp"
mv "$kdir/table-$key/bzImage.tmp" "$kdir/table-$key/bzImage"
say "built $kdir/table-$key/bzImage in $(($(date +%s) - start)) s"
echo "$kdir/table-$key/bzImage"
