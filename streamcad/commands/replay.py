"""`streamcad replay DIR`: a recorded session (``streamcad run --record DIR``) played back.

    streamcad replay DIR [--endpoint ADDR] [--speed X]      the recorded messages, unchanged, with
                                                             their recorded timing (UI work without a scanner)
    streamcad replay DIR --rescore [--model M] [--json OUT]  every recorded frame through the pipeline
                                                             again; per frame, how the new scores differ

Re-publishing waits for a first subscriber (``--wait N``, up to ``--wait-timeout`` s) so a UI
started after the replay still sees the session from its first message. Re-scoring uses the
recorded run config (ROI, quality, smoothing) and, without --model, the recorded model (its
sha256 is checked). Exit 0; 1 with one line for a folder that is not a recording.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

HELP = "re-publish a recorded session, or re-score its frames (--rescore)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a recording folder (streamcad run --record DIR)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="endpoint to bind (default tcp://127.0.0.1:5555)")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1: recorded timing)")
    p.add_argument("--encoding", choices=["json", "msgpack"], default="json")
    p.add_argument("--allow-remote", action="store_true", help="permit binding beyond loopback")
    p.add_argument("--wait", type=int, default=1, metavar="N", help="wait for N subscribers before playing (0: start at once)")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="then start anyway (seconds, default 30)")
    p.add_argument("--rescore", action="store_true", help="score the recorded frames again and compare")
    p.add_argument("--model", help="--rescore: the model to score with (default: the recorded one)")
    p.add_argument("--backend", help="--rescore: onnxruntime (default: as recorded) | torch | tensorrt")
    p.add_argument("--json", dest="json_out", help="--rescore: write the summary and every frame's comparison here")


def run(args: argparse.Namespace) -> int:
    from streamcad.recording import replay
    from streamcad.rescore import rescore

    if args.rescore:
        out = rescore(args.dir, model=args.model, backend=args.backend)
        s = out["summary"]
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(out, f, indent=1)
        print(f"rescored {s['compared']} of {s['recorded_scores']} recorded scores ({s['not_rescored']} frames not "
              f"recorded); probabilities identical on {s['identical_probs']}, max |delta p| "
              f"{'-' if s['max_abs_delta'] is None else format(s['max_abs_delta'], '.6f')}; "
              f"state changed on {s['state_changes']}, flags on {s['flag_changes']}")
        for f in out["frames"]:
            if f["max_abs_delta"] and f["max_abs_delta"] > 0 or f["recorded_state"] != f["new_state"]:
                rm, nm = f["recorded_malignant"], f["new_malignant"]
                print(f"  frame {f['frame_index']:6d}  p(malignant) {rm if rm is None else round(rm, 4)} -> "
                      f"{nm if nm is None else round(nm, 4)}  state {f['recorded_state']} -> {f['new_state']}")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    res = replay(args.dir, endpoint=args.endpoint, speed=args.speed, encoding=args.encoding,
                 allow_remote=args.allow_remote, wait_subscribers=args.wait, wait_timeout_s=args.wait_timeout, stop=stop)
    print(f"replayed {res['sent']} of {res['messages']} messages on {res['endpoint']} at {res['speed']:g}x",
          file=sys.stderr)
    return 0
