"""Soak: the real pipeline under random source faults for a long time, watched by a subscriber.

    sweep source --FaultySource(RandomFaults: drop, corrupt, resize, stall/hang, disconnect)-->
    Pipeline (prepare / infer / publish threads, ONNX Runtime) --ZeroMQ 127.0.0.1--> Subscriber
    (this process: per-publisher seq check, status gaps, capture -> arrival latency)
                                                     +--> stalled UIs: raw SUBs that never read
    + psutil RSS and thread counts

Checked and written to JSON: exceptions out of the pipeline (none expected), seq gaps at the
subscriber and publisher drops (none expected), RSS growth after warm-up, the largest gap between
status messages, threads left behind after close (abandoned hung readers must end too).
With ``--stalled-subscribers N`` (default 1) N raw SUB sockets connect before the run and never
read, the whole time: the healthy subscriber must still see every seq, keep its latency
(``healthy_latency_ms``: t_capture_ns -> arrival here, same host clock) and see its statuses
(per-subscriber queues on the bound publisher; before that fix one stalled UI silenced all).
What the stalled ones got is counted at the end (``stalled_received``). With ``--churn-s S``
(default 10) a third UI connects every S seconds, waits for a status and leaves (``churns``,
``churn_statuses``): subscribers coming and going beside a stalled one (that combination,
with the queue size changed on the live socket, crashed libzmq's I/O thread; it is fixed now).

    python -m streamcad.benchmarks.soak --minutes 60                # writes benchmarks/results/soak-*.json
    python -m streamcad.benchmarks.soak --minutes 5 --pace none     # as fast as it goes (CPU bound)
    python -m streamcad.benchmarks.soak --minutes 1 --faults-per-minute 0 --pace none   # stalled UI only

A checkpoint is rewritten every --checkpoint-s seconds, so an interrupted soak still leaves its
numbers. tests/test_soak.py runs `run_soak` for 20,000 frames in CI.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from streamcad.client import Subscriber
from streamcad.config import config_from_dict
from streamcad.messages import Score, Status
from streamcad.pipeline import DEFAULT_MODEL, Pipeline
from streamcad.sources import ReconnectPolicy, open_source
from streamcad.sources.faults import FaultySource, RandomFaults

__all__ = ["run_soak", "default_faults", "main"]

log = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def default_faults(seed: int, per_minute: float, fps: float, hang_timeout_s: float,
                   sizes=((200, 150), None)) -> RandomFaults:
    """About `per_minute` faults of each kind per minute of frames at `fps` (rates are per grab).
    Stalls last 0.1 s to 1.3 x hang_timeout_s, so some of them become hangs whose reader the
    watchdog abandons."""
    p = per_minute / (60.0 * fps)
    return RandomFaults(
        seed=seed,
        rates={"drop": p, "corrupt": p, "resize": p / 2, "stall": p, "disconnect": p},
        stall_s=(0.1, 1.3 * hang_timeout_s), disconnect_s=(0.1, 1.0), drop=(1, 10), corrupt=(1, 5),
        sizes=sizes,
    )


def run_soak(model_path: str | Path, *, frames: int | None = None, seconds: float | None = None,
             pace: str = "native", fps: float = 30.0, screen: tuple[int, int] = (640, 480),
             faults: RandomFaults | None = None, hang_timeout_s: float = 1.0, warmup_frames: int = 2000,
             checkpoint_s: float = 60.0, on_checkpoint=None, threads: int = 1, seed: int = 0,
             stalled_subscribers: int = 0, hwm_seconds: float = 100.0, churn_s: float = 0.0) -> dict:
    """Run until `frames` are published or `seconds` pass. Returns the result dict (see module doc).

    Memory is measured after `warmup_frames` published frames and again at the end, after the
    pipeline stopped but before anything is closed (the live state's growth). `hwm_seconds`:
    100 s by default (the pipeline is measured, not a slow UI); the CLI passes the run default
    (4 s) so stalled subscribers overflow their own queues."""
    if frames is None and seconds is None:
        raise ValueError("give frames or seconds")
    threads_before = set(threading.enumerate())
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = config_from_dict({
        "source": {"uri": "sweep:", "fps": fps, "pace": pace},
        "model": {"path": str(model_path), "threads": threads},
        "publish": {"endpoint": endpoint, "stream": "soak", "hwm_seconds": hwm_seconds},
        "frames": frames,
        "dashboard": False,
    })
    inner = open_source("sweep:", screen=screen, fps=fps, pace=pace, seed=seed, hang_timeout_s=hang_timeout_s,
                        reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.5))
    source = FaultySource(inner, faults) if faults is not None else inner
    res: dict = {"frames_target": frames, "seconds_target": seconds, "pace": pace, "fps": fps,
                 "screen": list(screen), "hang_timeout_s": hang_timeout_s, "model": str(model_path),
                 "stalled_subscribers": stalled_subscribers, "hwm_seconds": hwm_seconds, "checkpoints": []}
    err: list[BaseException] = []
    n_scores = n_no_signal = n_status = n_msgs = 0
    expected: dict[str, int] = {}
    seq_gaps = 0
    publishers: set[str] = set()
    t_last_status = None
    max_status_gap = 0.0
    pub_last_status = None  # the publisher's own stamp: separates its delays from ours
    max_status_gap_pub = 0.0
    rss_warm = None
    t0 = time.monotonic()
    t_ckpt = t0
    pipe = Pipeline(cfg, source=source)
    sub = Subscriber(endpoint, rcvhwm=2_000_000, heartbeat_s=1.0)
    stalled = _stalled_subscribers(endpoint, stalled_subscribers)
    latencies: list[float] = []  # healthy UI: capture -> arrival, ms
    churn = {"n": 0, "statuses": 0, "sub": None, "t": time.monotonic()}
    try:
        time.sleep(0.3)  # the subscription reaches the publisher before the first message

        def target():
            try:
                res["report_obj"] = pipe.run()
            except BaseException as exc:  # recorded and reported: the soak's main finding
                err.append(exc)

        runner = threading.Thread(target=target, name="soak-pipeline")
        runner.start()
        deadline = None if seconds is None else t0 + seconds
        while True:
            alive = runner.is_alive()
            m = sub.recv(timeout=0.2)
            now = time.monotonic()
            if m is not None:
                n_msgs += 1
                publishers.add(m.publisher)
                exp = expected.get(m.publisher)
                if exp is not None and m.seq != exp:
                    seq_gaps += abs(m.seq - exp)
                expected[m.publisher] = m.seq + 1
                if isinstance(m, Score):
                    n_scores += 1
                    latencies.append((time.monotonic_ns() - m.t_capture_ns) / 1e6)
                    n_no_signal += "no_signal" in m.flags
                elif isinstance(m, Status):
                    n_status += 1
                    if t_last_status is not None and alive:
                        max_status_gap = max(max_status_gap, now - t_last_status)
                        max_status_gap_pub = max(max_status_gap_pub, (m.t_publish_ns - pub_last_status) / 1e9)
                    t_last_status, pub_last_status = now, m.t_publish_ns
                if rss_warm is None and n_scores >= warmup_frames:
                    rss_warm = _rss_mb()
                    res["t_warm_s"] = now - t0
            elif not alive:
                break  # pipeline finished and the queue is drained
            if deadline is not None and now >= deadline and alive:
                pipe.stop()
            if churn_s > 0:
                _churn_step(churn, endpoint, churn_s, now)
            if now - t_ckpt >= checkpoint_s:
                t_ckpt = now
                ck = {"t_s": round(now - t0, 1), "scores": n_scores, "rss_mb": round(_rss_mb(), 1),
                      "threads": threading.active_count(), "seq_gaps": seq_gaps,
                      "faults": len(getattr(source, "events", []))}
                res["checkpoints"].append(ck)
                log.info("soak checkpoint %s", ck)
                if on_checkpoint is not None:
                    on_checkpoint(dict(res, partial=True))
        runner.join(timeout=10)
        res["stalled_received"] = [_count_waiting(s) for _, s in stalled]
        res["churns"], res["churn_statuses"] = churn["n"], churn["statuses"]
        res["rss_warm_mb"] = rss_warm
        res["rss_end_mb"] = _rss_mb()
        res["wall_s"] = time.monotonic() - t0
    finally:
        pipe.close()
        sub.close()
        if churn["sub"] is not None:
            churn["sub"].close()
        for ctx, s in stalled:
            s.close(linger=0)
            ctx.term()
    report = res.pop("report_obj", None)
    # abandoned readers are daemons woken by close(); give every thread a grace period to end
    grace_end = time.monotonic() + 3.0
    left = []
    while time.monotonic() < grace_end:
        left = sorted(t.name for t in set(threading.enumerate()) - threads_before if t.is_alive())
        if not left:
            break
        time.sleep(0.05)
    events = list(getattr(source, "events", []))
    kinds: dict[str, int] = {}
    for e in events:
        k = "hang" if e.kind == "stall" and (e.t_end_ns - e.t_start_ns) / 1e9 >= hang_timeout_s else e.kind
        kinds[k] = kinds.get(k, 0) + 1
    stats = source.stats
    res.update({
        "exceptions": [repr(e) for e in err] + ([repr(e) for e in report.errors] if report else []),
        "messages": n_msgs, "scores": n_scores, "statuses": n_status, "no_signal_scores": n_no_signal,
        "publishers": len(publishers), "seq_gaps": seq_gaps, "subscriber_gap_count": sub.gap_count,
        "dropped_publish": report.dropped_publish if report else None,
        "frames_out": report.frames_out if report else None,
        "frames_grabbed": stats.frames_grabbed, "frames_rejected": stats.frames_rejected,
        "frames_overwritten": stats.frames_overwritten, "reconnects": stats.reconnects,
        "readers_abandoned": stats.readers_abandoned,
        "faults": len(events), "fault_kinds": kinds,
        "max_status_gap_s": round(max_status_gap, 3),  # at the subscriber (arrival times)
        "max_status_gap_publish_s": round(max_status_gap_pub, 3),  # at the publisher (t_publish_ns)
        "rss_growth_mb": None if rss_warm is None else round(res["rss_end_mb"] - rss_warm, 2),
        "threads_left": left,
        "latency_ms": report.latency_ms if report else {},
        "healthy_latency_ms": _percentiles(latencies),
        "fps_out": round(report.fps, 1) if report else None,
    })
    return res


def _stalled_subscribers(endpoint: str, n: int) -> list:
    """n raw SUB sockets (everything subscribed, 1-message queue, 1 KiB kernel buffer) that never
    read: UIs that hang. Returns (context, socket) pairs."""
    import zmq

    out = []
    for _ in range(n):
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 1)
        s.setsockopt(zmq.RCVBUF, 1024)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(endpoint)
        out.append((ctx, s))
    return out


def _churn_step(churn: dict, endpoint: str, every_s: float, now: float) -> None:
    """A UI that comes and goes: connect every `every_s` s, count a status if one came, leave."""
    sub = churn["sub"]
    if sub is not None:
        m = sub.recv(timeout=0)
        if isinstance(m, Status) or now - churn["t"] > 2.0:
            churn["statuses"] += isinstance(m, Status)
            sub.close()
            churn["sub"] = None
    elif now - churn["t"] >= every_s:
        churn["sub"] = Subscriber(endpoint, kinds=("status",), heartbeat_s=1.0)
        churn["n"] += 1
        churn["t"] = now


def _count_waiting(sock) -> int:
    """Messages a stalled subscriber can still read (what reached it before its queue filled)."""
    n = 0
    while sock.poll(200):
        sock.recv()
        n += 1
    return n


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    import numpy as np

    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)} | {"max": round(float(a.max()), 2)}


def _default_model(size: int) -> Path:
    """The shipped model if present; else the tests' small contract graph (reliability, not accuracy)."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from streamcad.manifest import write_manifest
    from tests.helpers_onnx import make_contract_onnx

    p = make_contract_onnx(Path(tempfile.mkdtemp(prefix="soak-")) / "contract.onnx", size=size)
    write_manifest(p, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)  # fixture threshold
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--frames", type=int, help="stop after N published frames instead of --minutes")
    ap.add_argument("--status-gap-limit", type=float, default=1.25,
                    help="exit 1 when two statuses were further apart than this at the publisher "
                         "(s; heartbeat 1 s + scheduling margin; the timing bound the unit test leaves to this run)")
    ap.add_argument("--model", help="model file with manifest (default: shipped model, else a contract graph)")
    ap.add_argument("--size", type=int, default=224, help="input size of the fallback contract graph")
    ap.add_argument("--pace", choices=["native", "none"], default="native")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--screen", default="640x480", help="sweep screen WxH")
    ap.add_argument("--faults-per-minute", type=float, default=2.0, help="of each kind")
    ap.add_argument("--hang-timeout", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-s", type=float, default=60.0)
    ap.add_argument("--stalled-subscribers", type=int, default=1,
                    help="raw SUBs connected the whole run that never read (default 1)")
    ap.add_argument("--hwm-seconds", type=float, default=4.0, help="publish.hwm_seconds (default: the run default)")
    ap.add_argument("--churn-s", type=float, default=10.0,
                    help="a UI connects every S s, takes a status and leaves (0: none; default 10)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/soak-YYYYmmdd-HHMM.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).setLevel(logging.INFO)
    from streamcad.benchmarks.machine import machine_info

    w, h = (int(v) for v in args.screen.lower().split("x"))
    model = Path(args.model) if args.model else _default_model(args.size)
    out = Path(args.out) if args.out else RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": "soak", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "minutes_target": args.minutes,
            "faults_per_minute_each": args.faults_per_minute, "machine": machine_info(), "pid": os.getpid()}

    def write(res: dict) -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({**meta, **res}, indent=2, default=str))
        tmp.replace(out)

    faults = None if args.faults_per_minute <= 0 else default_faults(args.seed, args.faults_per_minute, args.fps, args.hang_timeout, sizes=((w * 5 // 8, h * 5 // 8), None))
    res = run_soak(model, frames=args.frames, seconds=None if args.frames else args.minutes * 60, pace=args.pace, fps=args.fps, screen=(w, h), faults=faults,
                   hang_timeout_s=args.hang_timeout, checkpoint_s=args.checkpoint_s, on_checkpoint=write,
                   seed=args.seed, stalled_subscribers=args.stalled_subscribers, hwm_seconds=args.hwm_seconds,
                   churn_s=args.churn_s)
    res["partial"] = False
    write(res)
    gap_ok = res["max_status_gap_publish_s"] <= args.status_gap_limit
    ok = not res["exceptions"] and res["seq_gaps"] == 0 and not res["threads_left"] and gap_ok
    print(f"soak {res['wall_s'] / 60:.1f} min: {res['scores']} scores, {res['faults']} faults {res['fault_kinds']}, "
          f"gaps {res['seq_gaps']}, exceptions {len(res['exceptions'])}, RSS growth {res['rss_growth_mb']} MB, "
          f"healthy UI latency {res['healthy_latency_ms']} ms with {args.stalled_subscribers} stalled UI(s) "
          f"(they got {res['stalled_received']}), {res['churns']} UIs came and went "
          f"({res['churn_statuses']} got a status), "
          f"threads left {res['threads_left']}, largest status gap {res['max_status_gap_publish_s']} s "
          f"({'ok' if gap_ok else 'OVER'} the {args.status_gap_limit} s limit) -> {out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
