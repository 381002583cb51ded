"""`streamcad listen`: subscribe to a stream and print each message.

    streamcad listen --endpoint tcp://127.0.0.1:5555 --stream probe0 --count 10 --json

--json prints one JSON object per line (the wire payload's fields, "type" included); otherwise
one compact human line per message. Until the first message it waits for a publisher (one line
on stderr says so after --timeout seconds; --wait S gives up after S seconds instead). Exit 0
after --count messages, when every stream seen has said its source `ended` (a file played to its
end), or on Ctrl-C; exit 1 with one line when a stream that was talking goes silent for
--timeout seconds. Seq gaps are counted only when both scores and statuses are received (they
share one counter: with --kind status alone every score would look like a gap).

A malformed message (bad JSON or msgpack, unknown type or schema, out-of-range field, too deeply
nested, more than one frame, ...) is reported on stderr (rate-limited: the first few, then one
line per 10 s), counted, and skipped: a listener keeps listening. ``--strict`` instead exits 1
with one line on the first one. The closing summary on stderr gives rejected messages, seq gaps
and implausible seq jumps (a spoofed seq is not a gap). Joining a publisher after its first
message prints one line naming the seq joined at (start-up loss is visible, never silent).
"""

from __future__ import annotations

import argparse
import sys
import time

import msgspec

from streamcad.client import Subscriber
from streamcad.errors import MessageError, TransportError
from streamcad.messages import MESSAGE_TYPES, Preview, Score, Status
from streamcad.security import ClientCurve

HELP = "subscribe to a stream and print messages"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", action="append", help="endpoint to connect to (repeatable; default tcp://127.0.0.1:5555)")
    p.add_argument("--stream", action="append", help="stream id to receive (repeatable; default: all)")
    p.add_argument("--kind", action="append", choices=MESSAGE_TYPES,
                   help="message kind (repeatable; default: score and status; 'preview' = the JPEG previews)")
    p.add_argument("--count", type=int, default=0, help="exit after N messages (0: run until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of human lines")
    p.add_argument("--latest-only", action="store_true", help="CONFLATE: keep only the newest message")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="after the first message: fail if none arrives for S seconds (default 5)")
    p.add_argument("--wait", type=float, default=0.0,
                   help="before the first message: give up after S seconds (default 0: wait for a publisher)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="expected status interval in s (staleness = 3x)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 on the first malformed message (default: report, count and skip it)")
    p.add_argument("--curve-secret", help="CURVE: this client's NAME.key_secret file")
    p.add_argument("--curve-server-key", help="CURVE: the server's public NAME.key file")


def _human(msg: Score | Status | Preview) -> str:
    if isinstance(msg, Preview):
        return (f"preview {msg.stream} #{msg.seq:<6d} frame {msg.frame_index:<6d} {msg.format} {msg.width}x{msg.height} "
                f"{len(msg.image)} bytes roi {msg.roi} skipped {msg.skipped}")
    if isinstance(msg, Score):
        mal = "  -  " if msg.malignancy is None else f"{msg.malignancy:.3f}"
        flags = ",".join(msg.flags) or "-"
        total = msg.latency_ms.get("total")
        lat = "" if total is None else f" {total:6.1f} ms"
        return f"score  {msg.stream} #{msg.seq:<6d} frame {msg.frame_index:<6d} malignancy {mal} {msg.state:<10s} flags {flags}{lat}"
    src = msg.source
    state = src.state if src else "?"
    c = msg.counters
    return (f"status {msg.stream} #{msg.seq:<6d} source {state} fps in/out {msg.fps_in:.1f}/{msg.fps_out:.1f} "
            f"frames {c.frames_in}/{c.frames_out} dropped {c.dropped_publish} up {msg.uptime_s:.0f}s")


def run(args: argparse.Namespace) -> int:
    if args.count < 0 or args.timeout <= 0 or args.wait < 0:
        raise TransportError("--count must be >= 0, --timeout > 0 and --wait >= 0")
    curve = None
    if args.curve_secret or args.curve_server_key:
        if not (args.curve_secret and args.curve_server_key):
            raise TransportError("CURVE needs both --curve-secret and --curve-server-key")
        curve = ClientCurve(args.curve_secret, args.curve_server_key)
    endpoints = args.endpoint or ["tcp://127.0.0.1:5555"]
    n = 0
    with Subscriber(endpoints, streams=args.stream, kinds=tuple(args.kind or ("score", "status")),
                    latest_only=args.latest_only, curve=curve, heartbeat_s=args.heartbeat,
                    strict=True) as sub:
        reported = 0
        t_report = 0.0
        joined: set[tuple[str, str]] = set()
        t_start = t_last = time.monotonic()
        seen: set[str] = set()
        ended: set[str] = set()
        waiting_said = False
        while args.count == 0 or n < args.count:
            try:
                if not seen and not sub.rejected:  # no publisher yet (not even a malformed one): wait
                    msg = sub.recv(min(args.timeout, args.wait - (time.monotonic() - t_start)) if args.wait
                                   else args.timeout)
                else:
                    msg = sub.recv(max(0.0, t_last + args.timeout - time.monotonic()))
            except MessageError as exc:
                if args.strict:
                    print(f"streamcad listen: malformed message: {exc}", file=sys.stderr)
                    return 1
                now = time.monotonic()
                if reported < 5 or now - t_report >= 10.0:  # the first few, then one line per 10 s
                    reported += 1
                    t_report = now
                    print(f"streamcad listen: skipped a malformed message ({sub.rejected} so far): {exc}",
                          file=sys.stderr)
                continue
            if msg is None and not seen and not sub.rejected:
                if args.wait and time.monotonic() - t_start >= args.wait:
                    print(f"streamcad listen: no publisher on {', '.join(endpoints)} within --wait {args.wait:g} s",
                          file=sys.stderr)
                    return 1
                if not waiting_said:
                    waiting_said = True
                    print(f"streamcad listen: waiting for a publisher on {', '.join(endpoints)} (Ctrl-C to stop)",
                          file=sys.stderr)
                continue
            if msg is None:
                print(f"streamcad listen: no message from {', '.join(endpoints)} within {args.timeout:g} s"
                      + (f" ({sub.rejected} malformed messages skipped)" if sub.rejected else ""),
                      file=sys.stderr)
                return 1
            t_last = time.monotonic()
            for key in set(sub.joined_at) - joined:  # a publisher seen for the first time
                joined.add(key)
                if sub.joined_at[key]:
                    print(f"streamcad listen: joined stream {key[0]} (publisher {key[1]}) at seq "
                          f"{sub.joined_at[key]}: {sub.joined_at[key]} earlier messages went out before "
                          "this listener was there", file=sys.stderr)
            n += 1
            if args.json:
                sys.stdout.write(msgspec.json.encode(msg).decode() + "\n")
            else:
                sys.stdout.write(_human(msg) + "\n")
            sys.stdout.flush()
            seen.add(msg.stream)
            if isinstance(msg, Status) and msg.source is not None and msg.source.state == "ended":
                ended.add(msg.stream)
                if ended >= seen:  # every stream heard from has played to its end
                    break
        if sub.gap_count and {"score", "status"} <= set(args.kind or ("score", "status")):
            print(f"streamcad listen: {sub.gap_count} messages missing (seq gaps)", file=sys.stderr)
        if sub.rejected:
            kinds = ", ".join(f"{k}: {v}" for k, v in sub.rejected_by.most_common())
            print(f"streamcad listen: {sub.rejected} malformed messages skipped ({kinds})", file=sys.stderr)
        if sub.seq_anomalies:
            print(f"streamcad listen: {sub.seq_anomalies} implausible seq jumps (corrupt or spoofed), "
                  "not counted as gaps", file=sys.stderr)
    return 0
