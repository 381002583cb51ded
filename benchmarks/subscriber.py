"""The receiving end of the end-to-end benchmark, in its own process.

    python -m streamcad.benchmarks.subscriber --endpoint tcp://127.0.0.1:5555 --count 1000 --out recv.npz

    SUB socket (streamcad.client.Subscriber, every score and status of every stream)
      --> for each Score: time.monotonic_ns() at receipt, stored with the message's seq, frame
          index, t_capture_ns, t_publish_ns, per-stage latency_ms and probabilities
      --> recv.npz (arrays of length n) when `count` scores arrived, or `idle_s` passed without one

CLOCK_MONOTONIC is one system-wide clock on Linux, so t_recv - t_capture compares stamps taken
in two processes. Arrays are preallocated for `count` scores: the subscriber's memory stays flat
during a long run. It prints READY once connected (the harness also waits for the publisher to
see the subscription before it starts the pipeline).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from streamcad.messages import STAGES  # the one list of latency stages


def receive(endpoint: str, count: int, idle_s: float = 5.0, start_timeout_s: float = 60.0) -> dict:
    """Receive up to `count` scores -> dict of numpy arrays (see the module docstring)."""
    from streamcad.client import Subscriber
    from streamcad.messages import Score

    t_recv = np.zeros(count, np.int64)
    t_cap = np.zeros(count, np.int64)
    t_pub = np.zeros(count, np.int64)
    seq = np.zeros(count, np.int64)
    index = np.zeros(count, np.int64)
    lat = {s: np.full(count, np.nan) for s in STAGES}
    probs = np.full((count, 3), np.nan)
    malignancy = np.full(count, np.nan)
    n = 0
    statuses = 0
    with Subscriber(endpoint, heartbeat_s=1.0, rcvhwm=100_000) as sub:
        print("READY", flush=True)
        last = time.monotonic()
        first = True
        while n < count:
            msg = sub.recv(timeout=0.2)
            now_ns = time.monotonic_ns()
            if msg is None:
                if time.monotonic() - last > (start_timeout_s if first else idle_s):
                    break
                continue
            if not isinstance(msg, Score):
                statuses += 1  # statuses do not end the start wait: the backend may still be warming up
                continue
            last = time.monotonic()
            first = False
            t_recv[n], t_cap[n], t_pub[n] = now_ns, msg.t_capture_ns, msg.t_publish_ns
            seq[n], index[n] = msg.seq, msg.frame_index
            for s in STAGES:
                v = msg.latency_ms.get(s)
                if v is not None:
                    lat[s][n] = v
            if msg.probs is not None:
                probs[n] = (msg.probs.normal, msg.probs.benign, msg.probs.malignant)
            if msg.malignancy is not None:
                malignancy[n] = msg.malignancy
            n += 1
        gaps = sub.gap_count
        rejected = sub.rejected
    out = {
        "t_recv_ns": t_recv[:n], "t_capture_ns": t_cap[:n], "t_publish_ns": t_pub[:n], "seq": seq[:n],
        "frame_index": index[:n], "probs": probs[:n], "malignancy": malignancy[:n],
        "gaps": np.int64(gaps), "rejected": np.int64(rejected), "statuses": np.int64(statuses),
    }
    out.update({f"lat_{s}": a[:n] for s, a in lat.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--count", type=int, required=True, help="scores to receive")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--idle-s", type=float, default=5.0, help="give up this long after the last message")
    args = p.parse_args(argv)
    if args.count < 1:
        print("--count must be >= 1", file=sys.stderr)
        return 2
    data = receive(args.endpoint, args.count, args.idle_s)
    np.savez(args.out, **data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
