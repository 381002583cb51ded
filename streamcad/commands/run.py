"""`streamcad run --source URI --model PATH ...`: run the pipeline until Ctrl-C / SIGTERM,
--frames N, or the end of a file source. Every flag maps onto a config key (see --config)."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from streamcad.config import load_config

HELP = "run the pipeline: source -> model -> ZeroMQ scores"
HANDLES_SIGINT = True  # the CLI defers Ctrl-C during start-up until run_pipeline installs its own handler

# flag dest -> (section, key)
_FLAG_KEYS = {
    "source": ("source", "uri"),
    "loop": ("source", "loop"),
    "pace": ("source", "pace"),
    "fps": ("source", "fps"),
    "seed": ("source", "seed"),
    "roi": ("roi", "box"),
    "model": ("model", "path"),
    "backend": ("model", "backend"),
    "allow_unverified": ("model", "allow_unverified"),
    "threads": ("model", "threads"),
    "device": ("model", "device"),
    "precision": ("model", "precision"),
    "endpoint": ("publish", "endpoint"),
    "allow_remote": ("publish", "allow_remote"),
    "stream": ("publish", "stream"),
    "encoding": ("publish", "encoding"),
    "connect": ("publish", "connect"),
    "preview": ("preview", "enabled"),
    "record": ("record", "dir"),
    "frames": (None, "frames"),
}


def roi_arg(text: str) -> tuple[int, int, int, int]:
    """Parse --roi in run(), not as an argparse type: a ConfigError is then the CLI's one line,
    where argparse would print its whole usage block first."""
    from streamcad.roi import parse_roi

    return parse_roi(text)


def igtl_arg(text: str) -> dict:
    """--igtl '[HOST:]PORT' -> the [igtl] keys it sets (enabled, host, port)."""
    from streamcad.errors import ConfigError

    host, sep, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or (sep and not host):
        raise ConfigError(f"--igtl {text!r}: expected [HOST:]PORT with a port 1-65535 (e.g. 18944 or 127.0.0.1:18944)")
    out = {"enabled": True, "port": int(port)}
    if sep:
        out["host"] = host.strip("[]")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="file:PATH | device:N | url:rtsp://... | gst:PIPELINE | sweep:DIR")
    p.add_argument("--model", help="model file (.onnx with its .json manifest); default: the shipped one")
    p.add_argument("--config", help="TOML config file; flags override its keys")
    p.add_argument("--endpoint", help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:5555)")
    p.add_argument("--frames", type=int, help="stop after N published frames")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false", default=None)
    p.add_argument("--loop", action="store_true", default=None, help="file source: start over at the end")
    p.add_argument("--pace", choices=["native", "none"],
                   help="file/sweep: own fps, or every frame as fast as the pipeline scores them")
    p.add_argument("--fps", type=float, help="sweep fps / requested device fps")
    p.add_argument("--seed", type=int, help="sweep seed")
    p.add_argument("--roi", help="x,y,w,h: override the sector detection")
    p.add_argument("--backend", help="onnxruntime (default) | torch | tensorrt")
    p.add_argument("--allow-unverified", action="store_true", default=None, help="accept a bare ONNX without manifest")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    p.add_argument("--device", help="torch backend: cpu | cuda[:i]")
    p.add_argument("--precision", choices=["fp32", "fp16"])
    p.add_argument("--stream", help="stream id in every message (one per probe)")
    p.add_argument("--encoding", choices=["json", "msgpack"])
    p.add_argument("--connect", action="store_true", default=None,
                   help="connect --endpoint (a `streamcad proxy` frontend) instead of binding it")
    p.add_argument("--allow-remote", action="store_true", default=None, help="permit binding beyond loopback")
    p.add_argument("--preview", action="store_true", default=None,
                   help="publish the 'preview' topic (JPEG + overlays as data) for `streamcad view`")
    p.add_argument("--igtl", metavar="[HOST:]PORT",
                   help="serve OpenIGTLink for 3D Slicer (default port 18944, loopback unless --allow-remote)")
    p.add_argument("--record", metavar="DIR",
                   help="keep the session in DIR (new or empty): frames (PNG), every message, config, model; "
                        "`streamcad replay DIR` plays it back")
    p.add_argument("--report-json", help="write the final report (counters, latency percentiles) here")


def overrides_from_args(args: argparse.Namespace) -> dict:
    out: dict = {}
    for dest, (section, key) in _FLAG_KEYS.items():
        val = getattr(args, dest, None)
        if val is None:
            continue
        if dest == "roi" and isinstance(val, str):
            val = roi_arg(val)
        if section is None:
            out[key] = val
        else:
            out.setdefault(section, {})[key] = list(val) if isinstance(val, tuple) else val
    if getattr(args, "dashboard", None) is not None:
        out["dashboard"] = args.dashboard
    if getattr(args, "igtl", None) is not None:
        out["igtl"] = igtl_arg(args.igtl)
        if getattr(args, "allow_remote", None):
            out["igtl"]["allow_remote"] = True
    return out


def run_pipeline(config, report_json: str | None = None, source=None) -> int:
    from streamcad.pipeline import Pipeline

    with Pipeline(config, source=source) as pipe:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: pipe.stop())
        from streamcad.cli import startup_interrupted

        if startup_interrupted():  # Ctrl-C while the model and source were loading
            return 130
        show = config.dashboard and sys.stdout.isatty()
        if show:
            from rich.live import Live

            from streamcad.dashboard import render

            with Live(render(pipe), refresh_per_second=4, transient=False) as live:
                report = pipe.run(on_tick=lambda p: live.update(render(p)))
        else:
            report = pipe.run()
    summary = {
        "frames_in": report.frames_in,
        "frames_out": report.frames_out,
        "flagged": report.flagged,
        "overwritten": report.overwritten,
        "rejected": report.rejected,
        "dropped_publish": report.dropped_publish,
        "reconnects": report.reconnects,
        "wall_s": round(report.wall_s, 3),
        "fps": round(report.fps, 2),
        "latency_ms": report.latency_ms,
    }
    if report_json:
        with open(report_json, "w") as f:
            json.dump(summary, f, indent=2)
    lat = report.latency_ms.get("total", {})
    print(
        f"{report.frames_out} frames in {report.wall_s:.1f} s ({report.fps:.1f} fps); "
        f"total latency p50 {lat.get('p50', float('nan')):.2f} ms p99 {lat.get('p99', float('nan')):.2f} ms; "
        f"overwritten {report.overwritten}, flagged {report.flagged}, dropped {report.dropped_publish}",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides_from_args(args))
    return run_pipeline(config, args.report_json)
