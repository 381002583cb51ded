"""Revocation cut-off: how long a UI (or a publisher) whose CURVE key is removed from the
allow-list keeps receiving (or publishing), and what the cut costs the clients that stay allowed.

    bound Publisher (ServerCurve + allow dir) --CURVE--> UI 'revoked' + UI 'kept'      (direct)
    Publisher x2 --CURVE--> Proxy frontend (publisher allow dir) / backend (UI allow dir)
        --CURVE--> UI 'revoked' + UI 'kept'                                             (proxy)

Each trial: statuses at `--rate` per second; once both UIs receive, and a random 0-0.5 s later
(a random phase of the 0.5 s check), the revoked key file is unlinked (t0). Measured: cut-off = last message the revoked UI received after t0 (for the
publisher case: last message of the revoked publisher at the kept UI) minus t0; the kept UI's
longest silence across the cut and the seq it missed (counted by the Subscriber's gap tracker).

    python -m streamcad.benchmarks.revocation --trials 10          # writes benchmarks/results/revocation.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from streamcad.client import Subscriber
from streamcad.machine import machine_info
from streamcad.proxy import Proxy
from streamcad.security import ClientCurve, ServerCurve, generate_keypair
from streamcad.transport import Publisher

OUT = Path(__file__).resolve().parent / "results" / "revocation.json"


def _keys(root: Path) -> dict:
    ui_allow, pub_allow = root / "ui_allow", root / "pub_allow"
    ui_allow.mkdir()
    pub_allow.mkdir()
    _, server_secret = generate_keypair(root / "server", "server")
    k = {"server_secret": server_secret, "server_public": root / "server" / "server.key", "ui_allow": ui_allow,
         "pub_allow": pub_allow}
    for name, allow in (("revoked", ui_allow), ("kept", ui_allow), ("pub_revoked", pub_allow), ("pub_kept", pub_allow)):
        public, secret = generate_keypair(root / "own", name)
        (allow / f"{name}.key").write_bytes(public.read_bytes())
        k[name] = ClientCurve(secret, k["server_public"])
    return k


def _run_trial(pubs, uis, remove: Path, watch, rate: float, after_s: float) -> dict:
    """watch(ui_index, msg) -> True if the message counts as 'still getting through'."""
    period = 1.0 / rate
    arrivals: list[list[tuple[float, object]]] = [[] for _ in uis]
    t_end_warm = time.monotonic() + 10
    while time.monotonic() < t_end_warm and not all(len(a) >= 5 for a in arrivals):
        for p in pubs:
            p.publish_status()
        for i, ui in enumerate(uis):
            while (m := ui.recv(0.0005)) is not None:
                arrivals[i].append((time.monotonic(), m))
        time.sleep(period)
    # the removal at a random phase of the 0.5 s check, so the trials sample the whole range
    t_wait = time.monotonic() + random.uniform(0.0, 0.5)
    while time.monotonic() < t_wait:
        for p in pubs:
            p.publish_status()
        for ui in uis:
            while ui.recv(0.0005) is not None:
                pass
        time.sleep(period)
    gaps_before = uis[1].gap_count
    remove.unlink()
    t0 = time.monotonic()
    arrivals = [[] for _ in uis]
    while time.monotonic() < t0 + after_s:
        for p in pubs:
            p.publish_status()
        for i, ui in enumerate(uis):
            while (m := ui.recv(0.0005)) is not None:
                arrivals[i].append((time.monotonic(), m))
        time.sleep(period)
    through = [ts for i, a in enumerate(arrivals) for ts, m in a if watch(i, m)]
    kept = [ts for ts, _ in arrivals[1]]
    silences = [b - a for a, b in zip([t0, *kept], kept, strict=True)]
    return {
        "cutoff_s": (max(through) - t0) if through else 0.0,
        "still_through_at_end": bool(through and max(through) > t0 + after_s - 1.0),
        "kept_longest_silence_s": max(silences) if silences else None,
        "kept_missed_seq": uis[1].gap_count - gaps_before,
        "kept_received": len(kept),
    }


def trial_direct(root: Path, rate: float, after_s: float) -> dict:
    k = _keys(root)
    with Publisher("tcp://127.0.0.1:*", stream="probe0", curve=ServerCurve(k["server_secret"], k["ui_allow"]),
                   heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint, curve=k["revoked"]) as a, Subscriber(pub.endpoint, curve=k["kept"]) as b:
        return _run_trial([pub], [a, b], k["ui_allow"] / "revoked.key", lambda i, m: i == 0, rate, after_s)


def trial_proxy(root: Path, rate: float, after_s: float, side: str) -> dict:
    k = _keys(root)
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", curve=ServerCurve(k["server_secret"], k["ui_allow"]),
               publisher_curve=ServerCurve(k["server_secret"], k["pub_allow"])) as proxy:
        pubs = [Publisher(proxy.frontend, stream=s, connect=True, curve=k[s], heartbeat_s=60)
                for s in ("pub_revoked", "pub_kept")]
        try:
            with Subscriber(proxy.backend, curve=k["revoked"]) as a, Subscriber(proxy.backend, curve=k["kept"]) as b:
                if side == "ui":
                    return _run_trial(pubs, [a, b], k["ui_allow"] / "revoked.key", lambda i, m: i == 0, rate, after_s)
                return _run_trial(pubs, [a, b], k["pub_allow"] / "pub_revoked.key",
                                  lambda i, m: i == 1 and m.stream == "pub_revoked", rate, after_s)
        finally:
            for p in pubs:
                p.close()


def _summary(rows: list[dict]) -> dict:
    cut = [r["cutoff_s"] for r in rows]
    sil = [r["kept_longest_silence_s"] for r in rows if r["kept_longest_silence_s"] is not None]
    return {
        "trials": len(rows),
        "cutoff_s": {"min": min(cut), "median": statistics.median(cut), "max": max(cut)},
        "never_cut": sum(r["still_through_at_end"] for r in rows),
        "kept_longest_silence_s": {"min": min(sil), "median": statistics.median(sil), "max": max(sil)} if sil else None,
        "kept_missed_seq": [r["kept_missed_seq"] for r in rows],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--rate", type=float, default=30.0, help="statuses per second per publisher")
    ap.add_argument("--after-s", type=float, default=4.0, help="how long to watch after the key is removed")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    results = {}
    for name, fn in (("direct_ui", lambda r: trial_direct(r, args.rate, args.after_s)),
                     ("proxy_ui", lambda r: trial_proxy(r, args.rate, args.after_s, "ui")),
                     ("proxy_publisher", lambda r: trial_proxy(r, args.rate, args.after_s, "publisher"))):
        rows = []
        for _ in range(args.trials):
            with tempfile.TemporaryDirectory() as d:
                rows.append(fn(Path(d)))
        results[name] = _summary(rows)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "rows"}))
    doc = {"what": "CURVE revocation cut-off", "check_s": 0.5, "rate_per_s": args.rate, "after_s": args.after_s,
           "machine": machine_info(),
           "command": f"python -m streamcad.benchmarks.revocation --trials {args.trials}", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
