"""Re-scoring a recording: every recorded frame through the pipeline again, compared frame by frame.

    Recording(DIR) (streamcad.recording) ──► the recorded run config (ROI, quality, smoothing),
        source file:DIR (unpaced, in order) ──► Pipeline.run_sequential with `model`
        (default: the recorded model, checked against its recorded sha256) ──► MemorySink
    ──► per frame: recorded vs new probabilities, state and flags ──► {'summary', 'frames'}

    streamcad replay DIR --rescore [--model M] [--json OUT]

Its own module, above both the pipeline and the recording format: recording.py is a sink and a
source that the pipeline opens, so it cannot import the pipeline back (tests/test_layers.py holds
the runtime free of import cycles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamcad.messages import Score
from streamcad.recording import Recording, RecordingError

__all__ = ["rescore"]


def _probs(msg: Score) -> tuple[float, float, float] | None:
    return None if msg.probs is None else (msg.probs.normal, msg.probs.benign, msg.probs.malignant)


def rescore(directory: str | Path, *, model: str | Path | None = None, backend: str | None = None) -> dict:
    """Run every recorded frame through the pipeline again (the recorded run config: ROI,
    quality, smoothing; every frame in order, one thread) with `model` (default: the recorded
    model, which must still be there with the recorded sha256) and compare with the recorded
    scores frame by frame. Returns {'summary': {...}, 'frames': [per-frame dicts]}."""
    import msgspec

    from streamcad.config import RunConfig
    from streamcad.manifest import sha256_file
    from streamcad.pipeline import Pipeline
    from streamcad.sinks.memory import MemorySink

    rec = Recording(directory)
    recorded = [m for m in rec.messages() if isinstance(m, Score) and "no_signal" not in m.flags]
    cfg = dict(rec.session.get("config") or {})
    cfg["source"] = dict(cfg.get("source") or {}, uri=f"file:{rec.dir}", pace="none", loop=False)
    cfg.pop("record", None)
    cfg["frames"], cfg["dashboard"] = None, False
    rec_model = rec.session.get("model") or {}
    mcfg = dict(cfg.get("model") or {})
    if model is None:
        path = rec_model.get("path")
        if not path or not Path(path).is_file():
            raise RecordingError(f"{rec.dir}: the recorded model {path!r} is not there; pass --model PATH")
        if rec_model.get("sha256") and sha256_file(path) != rec_model["sha256"]:
            raise RecordingError(f"{path}: not the recorded model (sha256 differs from {rec_model['sha256'][:12]}...); "
                                 "pass --model PATH to compare another model on purpose")
        mcfg["path"] = str(path)
    else:
        mcfg["path"] = str(model)
    if backend is not None:
        mcfg["backend"] = backend
    cfg["model"] = mcfg
    try:
        config = msgspec.convert(cfg, RunConfig)
    except msgspec.ValidationError as exc:
        raise RecordingError(f"{rec.dir / 'session.json'}: the recorded config does not load here: {exc}") from exc
    sink = MemorySink()
    with Pipeline(config, sinks=[sink]) as pipe:
        pipe.run_sequential()
        new_sha = pipe.model.sha256
    new = [m for m in sink.scores if "no_signal" not in m.flags]
    by_index: dict[int, list[Score]] = {}
    for m in new:
        by_index.setdefault(m.frame_index, []).append(m)
    frames: list[dict[str, Any]] = []
    missing = 0
    for old in recorded:
        cands = by_index.get(old.frame_index)
        if not cands:
            missing += 1  # its frame was not recorded (writer dropped it, or messages-only)
            continue
        m = cands.pop(0)
        po, pn = _probs(old), _probs(m)
        delta = None if po is None or pn is None else max(abs(a - b) for a, b in zip(po, pn, strict=True))
        frames.append({
            "frame_index": old.frame_index,
            "recorded_malignant": None if po is None else po[2], "new_malignant": None if pn is None else pn[2],
            "max_abs_delta": delta, "recorded_probs": po, "new_probs": pn,
            "recorded_state": old.state, "new_state": m.state,
            "recorded_flags": list(old.flags), "new_flags": list(m.flags),
        })
    deltas = [f["max_abs_delta"] for f in frames if f["max_abs_delta"] is not None]
    summary = {
        "recording": str(rec.dir), "complete": rec.complete,
        "recorded_model": rec_model.get("id"), "recorded_sha256": rec_model.get("sha256"), "new_sha256": new_sha,
        "recorded_scores": len(recorded), "compared": len(frames), "not_rescored": missing,
        "both_scored": len(deltas),
        "identical_probs": sum(1 for f in frames if f["recorded_probs"] == f["new_probs"]),
        "max_abs_delta": max(deltas) if deltas else None,
        "mean_abs_delta_malignant": (float(np.mean([abs(f["recorded_malignant"] - f["new_malignant"])
                                                    for f in frames if f["max_abs_delta"] is not None]))
                                     if deltas else None),
        "state_changes": sum(1 for f in frames if f["recorded_state"] != f["new_state"]),
        "flag_changes": sum(1 for f in frames if f["recorded_flags"] != f["new_flags"]),
    }
    return {"summary": summary, "frames": frames}
