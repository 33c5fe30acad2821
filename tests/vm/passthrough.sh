# shellcheck shell=bash
# The passthrough test (docs/PASSTHROUGH.md); sourced by run.sh.
#
# The test VM (L1) has QEMU's virtio-iommu-pci and edu (as iommufd_vfio); edu is bound to
# vfio-pci there and `vhost-user-iommu-glue launch` runs QEMU 11.1 (this host's QEMU root,
# shared read-only over 9p) for a nested guest (L2: the same kernel, a busybox initramfs) with
# edu passed through from iommufd fds and the daemon as L2's IOMMU. TCG inside TCG: both boots
# take minutes.
#
# Guest side (L2, guest/passthrough-l2.sh + vfio-dma edu): edu's DMA engine proves blocked
# before ATTACH, data through a mapped IOVA to the mapped page, nothing through an IOVA never
# mapped or after UNMAP, the same IOVA reaching another page after ATTACH to another domain;
# then a reboot with those mappings live, and in the second boot a guest-physical address
# reaching its page through an identity (bypass) domain.
# Daemon side (L1 saves the control socket's answers at each step; checked here): the
# endpoint's domain, its mappings and the HWPT the daemon has it on (not QEMU's, from QEMU's
# trace) at each step; no stale domain after the reboot; a bypass domain. Then QEMU is
# SIGKILLed: the launcher stops the daemon, nothing is left running, edu is free (a new
# iommufd binds it).
# Restarts (between the edu steps and the reboot): the launcher runs the daemon behind the proxy
# with a state directory; while L2's vfio-dma keeps edu's DMA going (a held mapping, MAP/DMA/
# UNMAP rounds), L1 SIGKILLs the daemon three times and upgrades it once (a release build,
# SIGUSR1 to the launcher): the loop never fails, edu's domain maps what L2 holds before and
# after, every new daemon adopts edu on the old HWPT and moves it with one replace, and the
# iommufd's object census (IOASes, HWPTs; vfio-dma census with the launcher's fd) is unchanged.

# pt_check NAME DETAIL PYTHON-EXPR: PASS when the expression over the saved answers is true.
# `ep(step)` is edu's endpoint entry, `dom(step)` its domain entry (None if none).
pt_check() {
    local name=$1 detail=$2 expr=$3 out
    out=$(python3 - "$RUN/passthrough.share" "$expr" 2>&1 <<'PY'
import json, sys
share, expr = sys.argv[1], sys.argv[2]
EP = 0x28  # guest 00:05.0
def load(step, what):
    return json.load(open(f"{share}/l1-{step}-{what}.json"))
def ep(step):
    return next((e for e in load(step, "endpoints") if e["id"] == EP), None)
def hwpt(step):
    """The HWPT the daemon has edu on (None: not attached by the daemon)."""
    b = load(step, "backend")
    return next((e["hwpt"] for e in b["endpoints"] if e["endpoint"] == EP), None)
def qemu_hwpts():
    """The ids QEMU attached edu to at realize (its trace, in the nested guest's log)."""
    import re
    log = open(f"{share}/l2.log", errors="replace").read()
    return [int(m) for m in re.findall(r"iommufd_cdev_pasid_attach_ioas_hwpt.* to id=(\d+)", log)]
def maps(step):
    """edu's domain's mappings at `step`, page by page: {iova: (phys, r, w)}."""
    d = ep(step)["domain"]
    pages = {}
    for m in load(step, "mappings"):
        if m["domain"] != d:
            continue
        m = m["mapping"]
        for i in range((m["virt_end"] + 1 - m["virt_start"]) // 4096):
            pages[m["virt_start"] + 4096 * i] = (m["phys_start"] + 4096 * i, m["read"], m["write"])
    return pages
def expected():
    """The pages the nested guest's vfio-dma holds mapped (edu-expected.txt)."""
    out = {}
    for line in open(f"{share}/edu-expected.txt"):
        iova, phys, r, w = line.split()
        out[int(iova, 16)] = (int(phys, 16), r == "1", w == "1")
    return out
LOOP_IOVA = 0x800000  # the page the DMA loop maps and unmaps
def census(name):
    """(IOAS ids, HWPT ids) in the launcher's iommufd (vfio-dma census)."""
    words = open(f"{share}/census-{name}.txt").read().split()
    h = words.index("hwpt")
    return [int(w) for w in words[1:h]], [int(w) for w in words[h + 1:]]
def census_is_daemons(name, step):
    """The census `name` is exactly the objects of the daemon running at `step` (its blocked,
    stage-2 and domain IOASes, edu's HWPT; none adopted any more) and QEMU's (one IOAS, the
    HWPT of its trace): nothing of a previous daemon is left, nothing is missing."""
    b = load(step, "backend")
    mine = {b["blocked_ioas"], b["stage2_ioas"]} | {d["ioas"] for d in b["domains"] if d.get("ioas")}
    ioas, hw = census(name)
    return (b["adopting"] is None and mine <= set(ioas) and len(set(ioas) - mine) == 1
            and set(hw) == {hwpt(step)} | set(qemu_hwpts()))
def log_count(text):
    return open(f"{share}/l2.log", errors="replace").read().count(text)
def dom(step):
    e = ep(step)
    if e is None or e["domain"] is None:
        return None
    return next((d for d in load(step, "domains") if d["id"] == e["domain"]), None)
ok = eval(expr)
print(f"{expr} -> {ok}")
sys.exit(0 if ok else 1)
PY
)
    if [ $? = 0 ]; then report "$name" PASS "$detail: $out"; else report "$name" FAIL "$detail: $out"; fi
}

t_passthrough() {
    local files=$RUN/passthrough.files
    mkdir -p "$files"
    cp "$KERNEL" "$files/bzImage"
    vm_initramfs "$files/l2.cpio.gz" "$G/passthrough-l2.sh" "$RUN/vfio-dma"
    upgrade_binary
    cp "$UPGRADE" "$files/vhost-user-iommu-upgrade"
    guest_dyn_files "$DAEMON" "$GLUE"
    GUEST_FILES+=("$RUN/vfio-dma")
    boot_guest passthrough "$G/passthrough.sh" 2700 "$VFIO_APPEND" -- -m 1536 \
        -device virtio-iommu-pci -device edu \
        -virtfs "local,path=/,mount_tag=qemuroot,security_model=none,readonly=on" \
        -virtfs "local,path=$(qpath "$files"),mount_tag=files,security_model=none,readonly=on"
    GUEST_FILES=()
    pt_check passthrough/daemon/blocked "before ATTACH edu has no domain with mappings" \
        'dom("blocked") is None or dom("blocked")["mappings"] == 0'
    pt_check passthrough/daemon/qemu-attached "QEMU attached edu to its own HWPT at realize (trace)" \
        'len(qemu_hwpts()) >= 1'
    pt_check passthrough/daemon/taken-over "before the guest's ATTACH the daemon has edu on its own HWPT, not QEMU's" \
        'hwpt("blocked") is not None and hwpt("blocked") not in qemu_hwpts()'
    pt_check passthrough/daemon/mapped "after ATTACH + MAP edu's domain maps, edu on the daemon's HWPT" \
        'dom("mapped") is not None and dom("mapped")["mappings"] >= 1 and hwpt("mapped") not in qemu_hwpts() + [None, hwpt("blocked")]'
    pt_check passthrough/daemon/unmapped "after UNMAP edu's domain maps nothing" \
        'dom("unmapped") is not None and dom("unmapped")["mappings"] == 0'
    pt_check passthrough/daemon/replaced "after ATTACH to another domain edu is there, mapped" \
        'dom("replaced") is not None and dom("replaced")["id"] != dom("mapped")["id"] and dom("replaced")["mappings"] >= 1'
    pt_check passthrough/restart/mapped-before "before the restarts edu's domain maps what vfio-dma holds (and at most the loop's page)" \
        'maps("restarts-before") and all(maps("restarts-before").get(i) == v for i, v in expected().items()) and set(maps("restarts-before")) <= set(expected()) | {LOOP_IOVA}'
    pt_check passthrough/restart/mapped-after "after 3 SIGKILLs and an upgrade edu's domain maps the same (and at most the loop's page)" \
        'all(maps("restarts-after").get(i) == v for i, v in expected().items()) and set(maps("restarts-after")) <= set(expected()) | {LOOP_IOVA}'
    pt_check passthrough/restart/mapped-loop-done "the loop stopped: edu's domain maps exactly the guest's live mappings" \
        'maps("loop-done") == expected()'
    pt_check passthrough/restart/census "the launcher's iommufd holds as many IOASes and HWPTs after the restarts as before (the old ones adopted, then released)" \
        'len(census("before")[0]) == len(census("after")[0]) == len(census("loop-done")[0]) and len(census("before")[1]) == len(census("after")[1]) == len(census("loop-done")[1])'
    pt_check passthrough/restart/census-exact "before, after the restarts and at the end the iommufd holds exactly the running daemon's objects and QEMU's" \
        'census_is_daemons("before", "restarts-before") and census_is_daemons("after", "restarts-after") and census_is_daemons("loop-done", "loop-done")'
    pt_check passthrough/restart/adopted "each of the 4 new daemons adopted edu on the previous daemon's HWPT and moved it with one replace" \
        'log_count("adopted the VFIO device the VMM bound") == 4 and log_count("moved from the previous process") == 4 and log_count("objects released") == 4'
    pt_check passthrough/restart/resumed "the journal was resumed 4 times, never refused" \
        'log_count("journaled state resumed") >= 4 and log_count("not resumed") == 0 and log_count("cannot move") == 0'
    pt_check passthrough/daemon/no-stale-domain "after the nested guest rebooted with live mappings: no domain without endpoints, no mapping, no IOAS left behind" \
        'all(d["endpoints"] for d in load("second-boot", "domains")) and sum(d["mappings"] for d in load("second-boot", "domains")) == 0 and len(load("second-boot", "backend")["domains"]) == len(load("second-boot", "domains"))'
    pt_check passthrough/daemon/bypass "edu's group in an identity domain: a bypass domain in the daemon" \
        'dom("bypass") is not None and dom("bypass")["bypass"]'
}
