#!/usr/bin/env python3
"""Host-side checks of the vhost-user-iommu daemon state (control socket, docs/CONTROL.md)
against what the guest reported. Each subcommand prints one detail line and exits 0 (pass) or
1 (fail); 2 on usage/connection errors. Files written by the guest are untrusted: they are
parsed strictly and anything malformed fails the check."""

import json
import re
import socket
import subprocess
import sys

TIMEOUT = 10


def ask(sock_path, req):
    """One request/response over a fresh connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(sock_path)
        s.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    resp = json.loads(buf)
    if not resp.get("ok"):
        raise RuntimeError(f"daemon refused {req}: {resp.get('error')}")
    return resp["result"]


def all_mappings(sock_path, domain):
    out, start = [], 0
    for _ in range(10000):
        page = ask(sock_path, {"cmd": "mappings", "domain": domain, "start": start, "limit": 1000})
        out += page["mappings"]
        if page["next"] is None:
            return out
        start = page["next"]
    raise RuntimeError("mappings paging did not end")


BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def read_bdfs(path):
    bdfs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if not BDF.match(line):
                raise ValueError(f"{path}: malformed line {line!r}")
            bdfs.append(line)
    return bdfs


def endpoint_ids(glue, viot, bdfs):
    ids = {}
    for b in bdfs:
        r = subprocess.run([glue, "endpoint", "--viot", viot, b], capture_output=True, text=True,
                           timeout=TIMEOUT)
        if r.returncode == 0:
            ids[b] = int(r.stdout.strip())
    return ids


def cmd_endpoints(sock, glue, viot, groups_file):
    """Every guest function in an IOMMU group of our device is an endpoint the daemon has
    attached, and the daemon knows no other endpoint."""
    bdfs = read_bdfs(groups_file)
    ids = endpoint_ids(glue, viot, bdfs)
    if not ids:
        return False, f"no guest function of {bdfs} is covered by the VIOT"
    eps = ask(sock, {"cmd": "endpoints"})
    daemon = {e["id"]: e["domain"] for e in eps}
    want = set(ids.values())
    missing = want - set(daemon)
    extra = set(daemon) - want
    unattached = sorted(i for i in want & set(daemon) if daemon[i] is None)
    detail = (f"guest endpoints {sorted(want)} ({', '.join(f'{b}={i}' for b, i in sorted(ids.items()))}); "
              f"daemon endpoints {sorted(daemon)}")
    if missing or extra or unattached:
        return False, detail + f"; missing {sorted(missing)} extra {sorted(extra)} unattached {unattached}"
    return True, detail + "; all attached"


def cmd_config(sock, mask, start, end):
    st = ask(sock, {"cmd": "status"})
    c = st["config"]
    ok = (c["page_size_mask"] == int(mask, 0) and c["input_start"] == int(start, 0)
          and c["input_end"] == int(end, 0) and st["connected"])
    return ok, (f"daemon config mask {c['page_size_mask']:#x} input {c['input_start']:#x}-{c['input_end']:#x}, "
                f"connected={st['connected']}, features acked {st['features_acked']:#x}")


def domain_of(sock, endpoint):
    for e in ask(sock, {"cmd": "endpoints"}):
        if e["id"] == endpoint:
            return e["domain"]
    return None


def pages_of(mappings, limit=1 << 16):
    pages = {}
    for m in mappings:
        n = (m["virt_end"] + 1 - m["virt_start"]) // 4096
        if n > limit:
            raise ValueError(f"mapping {m['virt_start']:#x}-{m['virt_end']:#x} too large to compare page by page")
        for i in range(n):
            pages[m["virt_start"] + 4096 * i] = (m["phys_start"] + 4096 * i, m["read"], m["write"])
    return pages


def read_expected(path):
    exp = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                raise ValueError(f"{path}: malformed line {line!r}")
            iova, phys, r, w = int(parts[0], 16), int(parts[1], 16), parts[2] == "1", parts[3] == "1"
            exp[iova] = (phys, r, w)
    return exp


def cmd_save_domain(sock, endpoint, out):
    """Record the endpoint's domain and its mappings (the baseline before the guest maps)."""
    d = domain_of(sock, int(endpoint))
    if d is None:
        return False, f"endpoint {endpoint} is not attached to a domain"
    maps = all_mappings(sock, d)
    with open(out, "w") as f:
        json.dump({"domain": d, "mappings": maps}, f)
    return True, f"endpoint {endpoint} in domain {d} with {len(maps)} mapping(s) before the guest maps"


def cmd_mappings(sock, endpoint, baseline_file, expected_file):
    """The endpoint's domain holds exactly baseline + the guest's pages (iova -> phys, r/w)."""
    with open(baseline_file) as f:
        base = json.load(f)
    d = domain_of(sock, int(endpoint))
    if d != base["domain"]:
        return False, f"endpoint {endpoint} moved from domain {base['domain']} to {d}"
    want = pages_of(base["mappings"])
    if expected_file != "-":
        exp = read_expected(expected_file)
        clash = set(exp) & set(want)
        if clash:
            return False, f"guest pages overlap the baseline at {sorted(clash)[:4]}"
        want.update(exp)
    maps = all_mappings(sock, d)
    have = pages_of(maps)
    if have == want:
        return True, f"domain {d}: {len(maps)} mapping(s), {len(have)} page(s), identical to the guest's"
    diff = sorted(set(have) ^ set(want)) or sorted(k for k in have if have[k] != want[k])
    ex = [(hex(k), have.get(k), want.get(k)) for k in diff[:3]]
    return False, f"domain {d}: {len(have)} page(s) vs {len(want)} expected; first differences (iova, daemon, guest): {ex}"


def cmd_save_counters(sock, out):
    c = ask(sock, {"cmd": "counters"})
    with open(out, "w") as f:
        json.dump(c, f)
    return True, "requests so far: " + ", ".join(
        f"{t} {sum(v.values())}" for t, v in sorted(c["requests"].items()))


def cmd_counters_delta(sock, before_file, min_maps):
    """Since the saved counters: at least MIN_MAPS successful MAPs, every MAP and UNMAP ok."""
    with open(before_file) as f:
        before = json.load(f)["requests"]
    now = ask(sock, {"cmd": "counters"})["requests"]

    def delta(kind):
        b, n = before.get(kind, {}), now.get(kind, {})
        return {k: n.get(k, 0) - b.get(k, 0) for k in set(b) | set(n) if n.get(k, 0) != b.get(k, 0)}

    dm, du = delta("map"), delta("unmap")
    bad = {f"map.{k}": v for k, v in dm.items() if k != "ok"}
    bad.update({f"unmap.{k}": v for k, v in du.items() if k != "ok"})
    ok = dm.get("ok", 0) >= int(min_maps) and du.get("ok", 0) > 0 and not bad
    return ok, f"MAP ok +{dm.get('ok', 0)}, UNMAP ok +{du.get('ok', 0)}, failures {bad or 'none'}"


def cmd_translate(sock, endpoint, iova, access, outcome, extra="-"):
    """translate gives OUTCOME; EXTRA is the fault reason, or the expected phys for
    translated/bypass ("-": not checked)."""
    r = ask(sock, {"cmd": "translate", "endpoint": int(endpoint, 0), "iova": int(iova, 0), "access": access})
    ok = r.get("outcome") == outcome
    if ok and extra != "-":
        ok = (r.get("reason") == extra) if outcome == "fault" else (r.get("phys") == int(extra, 0))
    return ok, f"translate EP {endpoint} iova {iova} {access}: {json.dumps(r)} (want {outcome} {extra})"


def cmd_fault_logged(sock, endpoint, iova, reason):
    """The daemon's fault log has this fault, marked delivered to the guest."""
    faults = ask(sock, {"cmd": "faults"})
    hits = [f for f in faults if f["endpoint"] == int(endpoint, 0) and f["address"] == int(iova, 0)
            and f["reason"] == reason]
    ok = bool(hits) and all(f["delivered"] for f in hits)
    return ok, f"faults log: {json.dumps(hits) if hits else 'no entry'} of {len(faults)}"


def cmd_bypass_domains(sock, glue, viot, groups_file):
    """Every guest endpoint behind our IOMMU sits in a bypass (ATTACH_F_BYPASS) domain."""
    ids = endpoint_ids(glue, viot, read_bdfs(groups_file))
    doms = ask(sock, {"cmd": "domains"})
    where = {ep: d for d in doms for ep in d["endpoints"]}
    bad = sorted(i for i in ids.values() if i not in where or not where[i]["bypass"])
    desc = "; ".join(f"domain {d['id']} bypass={d['bypass']} eps={d['endpoints']} maps={d['mappings']}" for d in doms)
    return (not bad and bool(ids)), f"guest endpoints {sorted(ids.values())}; daemon: {desc}" + (f"; not bypassed: {bad}" if bad else "")


def cmd_status_bypass(sock, want):
    st = ask(sock, {"cmd": "status"})
    return st["config"]["bypass"] == int(want), f"config bypass = {st['config']['bypass']} (want {want})"


def cmd_unknown_endpoint(sock, glue, viot, groups_file):
    """Prints an endpoint id that no guest function has and the daemon has not seen."""
    used = set(endpoint_ids(glue, viot, read_bdfs(groups_file)).values())
    used |= {e["id"] for e in ask(sock, {"cmd": "endpoints"})}
    ep = max(used | {0}) + 0x1000
    return True, str(ep)


def cmd_connection(sock, connected, connections):
    """status: connected is CONNECTED (0/1) and the daemon has accepted CONNECTIONS frontends."""
    st = ask(sock, {"cmd": "status"})
    ok = st["connected"] == bool(int(connected)) and st["connections"] == int(connections)
    return ok, (f"connected={st['connected']} connections={st['connections']} endpoints={st['endpoints']} "
                f"domains={st['domains']} mappings={st['mappings']} (want connected={bool(int(connected))}, "
                f"connections={connections})")


def cmd_wait_disconnect(sock, seconds):
    """Bounded wait until the daemon reports no frontend connected."""
    import time
    deadline = time.monotonic() + float(seconds)
    while True:
        st = ask(sock, {"cmd": "status"})
        if not st["connected"]:
            return True, f"disconnected; endpoints={st['endpoints']} domains={st['domains']} mappings={st['mappings']}"
        if time.monotonic() > deadline:
            return False, f"still connected after {seconds} s"
        time.sleep(0.2)


def cmd_counter(sock, kind, status, expected):
    """requests.KIND.STATUS equals EXPECTED ("N+": at least N)."""
    c = ask(sock, {"cmd": "counters"})["requests"].get(kind, {})
    n = c.get(status, 0)
    ok = n >= int(expected[:-1]) if expected.endswith("+") else n == int(expected)
    return ok, f"{kind} counters {json.dumps(c)} (want {status}={expected})"


def cmd_same_as_socket(sock, what, cli_output):
    """The daemon's `ctl WHAT` printed the same JSON the socket answers."""
    with open(cli_output) as f:
        text = f.read()
    try:
        printed = json.loads(text)
    except ValueError:
        return False, f"ctl {what} did not print JSON: {text[:200]!r}"
    direct = ask(sock, {"cmd": what})
    return printed == direct, f"ctl {what}: {json.dumps(printed)[:200]}"


def cmd_counter_failures(sock, *kinds):
    """No request of these kinds has completed with a status other than ok."""
    req = ask(sock, {"cmd": "counters"})["requests"]
    bad = {f"{k}.{st}": n for k in kinds for st, n in req.get(k, {}).items() if st != "ok" and n}
    return not bad, ", ".join(f"{k} {json.dumps(req.get(k, {}))}" for k in kinds)


def cmd_totals(sock, mappings):
    """status: the daemon holds MAPPINGS mappings in all (domains listed for the record)."""
    st = ask(sock, {"cmd": "status"})
    doms = ask(sock, {"cmd": "domains"})
    desc = "; ".join(f"domain {d['id']} eps={d['endpoints']} maps={d['mappings']}" for d in doms)
    return st["mappings"] == int(mappings), f"{st['mappings']} mapping(s) (want {mappings}); {desc}"


def cmd_detached(sock, endpoint):
    """ENDPOINT is in no domain (the guest released it)."""
    ep = int(endpoint, 0)
    doms = [d["id"] for d in ask(sock, {"cmd": "domains"}) if ep in d["endpoints"]]
    eps = {e["id"]: e["domain"] for e in ask(sock, {"cmd": "endpoints"})}
    return not doms, f"endpoint {ep}: domains {doms}, endpoints entry {eps.get(ep, 'absent')}"


def cmd_domain_ids(sock, first, last):
    """Every domain id the guest chose lies in the configured domain range."""
    ids = sorted(d["id"] for d in ask(sock, {"cmd": "domains"}))
    lo, hi = int(first, 0), int(last, 0)
    return bool(ids) and all(lo <= i <= hi for i in ids), f"domain ids {ids} (range {lo}-{hi})"


def cmd_table_domains(sock, fmt):
    """Every domain the guest made is a table domain of format FMT ("none": none has a table),
    none bypasses or holds MAP mappings."""
    doms = ask(sock, {"cmd": "domains"})
    want = None if fmt == "none" else int(fmt)
    bad = [d["id"] for d in doms
           if d["bypass"] or (d["table"] or {}).get("format") != want or (want is not None and d["mappings"])]
    desc = "; ".join(f"domain {d['id']} eps={d['endpoints']} table={(d['table'] or {}).get('format')} "
                     f"maps={d['mappings']}" for d in doms)
    return (bool(doms) and not bad), f"{len(doms)} domain(s): {desc}" + (f"; not as wanted: {bad}" if bad else "")


BENCH_LINE = re.compile(r"^VUI-BENCH map_100ns=(\d+) map_stddev=\d+ unmap_100ns=(\d+) unmap_stddev=\d+ seconds=(\d+) ")


def cmd_table_dma(sock, before_file, want_table, mode, guest_log):
    """Requests since BEFORE_FILE while the guest ran the DMA map benchmark (its VUI-BENCH line in
    GUEST_LOG gives the calls' latencies, so about how many map/unmap pairs it made). Table
    mode: no MAP/UNMAP, every unmap an INVALIDATE (strict) or a few flushes of the whole domain
    (lazy: the flush queue); stock mode: MAPs and UNMAPs, no INVALIDATE."""
    with open(before_file) as f:
        before = json.load(f)["requests"]
    now = ask(sock, {"cmd": "counters"})["requests"]

    def delta(kind, st="ok"):
        return now.get(kind, {}).get(st, 0) - before.get(kind, {}).get(st, 0)

    failed = {f"{k}.{st}": n - before.get(k, {}).get(st, 0) for k, v in now.items() for st, n in v.items()
              if st != "ok" and n != before.get(k, {}).get(st, 0)}
    bench = None
    with open(guest_log, errors="replace") as f:
        for line in f:
            m = BENCH_LINE.match(line.strip())
            if m:
                bench = tuple(int(x) for x in m.groups())
    if bench is None:
        return False, "no VUI-BENCH line in the guest's log"
    map100, unmap100, secs = bench
    pairs = secs * 10_000_000 / max(1, map100 + unmap100)
    maps, unmaps, invs = delta("map"), delta("unmap"), delta("invalidate")
    detail = (f"MAP +{maps}, UNMAP +{unmaps}, INVALIDATE +{invs}, failures {failed or 'none'}; "
              f"benchmark: map {map100 / 10:.1f} us, unmap {unmap100 / 10:.1f} us, about {pairs:.0f} pairs")
    if failed:
        return False, detail
    if want_table == "1":
        if mode == "strict":
            ok = maps == 0 and unmaps == 0 and invs >= 0.2 * pairs
        else:
            ok = maps == 0 and unmaps == 0 and 1 <= invs <= 0.05 * pairs
    else:
        ok = maps >= 0.2 * pairs and unmaps > 0 and invs == 0
    return ok, detail


def cmd_table_translate(sock, endpoint, expected_file, state):
    """STATE "mapped": the daemon's translate of every page of EXPECTED_FILE (the guest's
    "iova phys r w" lines, phys from pagemap) gives that page, and a write to a read-only page
    faults; "unmapped": every one of those pages faults (the driver invalidated them)."""
    exp = read_expected(expected_file)
    if not exp:
        return False, f"{expected_file}: no pages"
    bad = []
    for iova, (phys, r, w) in sorted(exp.items()):
        access = "rw" if r and w else ("w" if w else "r")
        t = ask(sock, {"cmd": "translate", "endpoint": int(endpoint, 0), "iova": iova, "access": access})
        if state == "mapped":
            if t.get("outcome") != "translated" or t.get("phys") != phys:
                bad.append((hex(iova), hex(phys), t))
            elif not w:
                t = ask(sock, {"cmd": "translate", "endpoint": int(endpoint, 0), "iova": iova, "access": "w"})
                if t.get("outcome") != "fault":
                    bad.append((hex(iova), "write to a read-only page", t))
        elif t.get("outcome") != "fault":
            bad.append((hex(iova), "still translates", t))
    return not bad, (f"{len(exp)} page(s) {state}: " + ("all as the guest has them" if not bad
                                                         else f"{len(bad)} wrong, first {bad[:3]}"))


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"endpoints": cmd_endpoints, "config": cmd_config, "save-domain": cmd_save_domain,
          "mappings": cmd_mappings,
          "save-counters": cmd_save_counters, "domain-ids": cmd_domain_ids, "detached": cmd_detached, "totals": cmd_totals, "counter-failures": cmd_counter_failures, "same-as-socket": cmd_same_as_socket, "counter": cmd_counter, "connection": cmd_connection,
          "wait-disconnect": cmd_wait_disconnect, "translate": cmd_translate,
          "fault-logged": cmd_fault_logged, "bypass-domains": cmd_bypass_domains,
          "status-bypass": cmd_status_bypass, "unknown-endpoint": cmd_unknown_endpoint, "counters-delta": cmd_counters_delta,
          "table-domains": cmd_table_domains, "table-dma": cmd_table_dma, "table-translate": cmd_table_translate}.get(cmd)
    if fn is None:
        print(f"unknown subcommand {cmd}")
        return 2
    try:
        ok, detail = fn(*args)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, subprocess.SubprocessError) as e:
        print(f"error: {e}")
        return 1
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
