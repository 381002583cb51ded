"""Lever 8 (INT8) screened before it is built into the converter: ONNX Runtime static quantisation
of a model, judged by the converter's own accuracy gate and timed against the FP32 graph.

    MODEL.onnx --onnxruntime.quantization.quant_pre_process--> shape-inferred graph
      --quantize_static (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges from
        calibration images of the training folds 1-4)--> one graph per variant:
          all:  every op ONNX Runtime quantises (Conv, MatMul, Add, ...)
          conv: the convolutions only (the attention and the heads stay FP32)
      --held-out fold 0 of both datasets, each image as it is (streamcad.preprocess)-->
          engines.gate.run_gate(FP32 probs, INT8 probs, malignant labels): max prob diff <= 1e-2,
          argmax flips <= 1%, |AUC delta| <= 0.005 (the FP16 gate of `streamcad convert`);
          the embedding's relative change (the out-of-domain gate reads it; its threshold was
          fitted on the FP32 embedding) and the lesion map's largest change
      --ONNX Runtime, 1 intra-op thread, batch 1, FP32 and INT8 interleaved call by call-->
          median / p99 per call and the ratio to FP32
      --> JSON

    OMP_NUM_THREADS=1 python -m streamcad.benchmarks.int8_screen engines/models/default.onnx \\
        --out benchmarks/results/int8-screen.json

Nothing here changes a model the runtime loads: a variant that passed would still need the
converter path (manifest precision, the out-of-domain gate refitted on its embedding) before
anyone ran it.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from streamcad.benchmarks.machine import machine_info
from streamcad.errors import ConfigError

__all__ = ["VARIANTS", "quantize", "screen", "main"]

log = logging.getLogger(__name__)

VARIANTS = {"all": None, "conv": ["Conv"]}  # name -> op_types_to_quantize (None: every op ORT quantises)


def quantize(src: Path, out: Path, calibration: np.ndarray, op_types: list[str] | None) -> Path:
    """Static QDQ quantisation of `src` with MinMax ranges from `calibration` (N, 1, S, S) -> `out`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict | None:
            if self.i >= len(calibration):
                return None
            self.i += 1
            return {"input": calibration[self.i - 1 : self.i]}

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    kw = {} if op_types is None else {"op_types_to_quantize": op_types}
    quantize_static(str(pre), str(out), Frames(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, **kw)
    pre.unlink()
    return out


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _outputs(session, x: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(None, {"input": x[i : i + batch]}) for i in range(0, len(x), batch)]
    return {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)}


def _times(sessions: list, x1: np.ndarray, rounds: int) -> list[np.ndarray]:
    ts = [[] for _ in sessions]
    for _ in range(rounds):
        for k, s in enumerate(sessions):
            t = time.perf_counter_ns()
            s.run(None, {"input": x1})
            ts[k].append((time.perf_counter_ns() - t) / 1e6)
    return [np.asarray(t) for t in ts]


def screen(model: Path, calibration: np.ndarray, test: np.ndarray, labels: np.ndarray | None,
           variants: dict[str, list[str] | None] = VARIANTS, rounds: int = 200) -> dict:
    """Quantise `model` per variant on `calibration`, gate each on `test` (labels: 1 = malignant,
    None: no AUC rule), time each against FP32 -> the result dict (module docstring)."""
    from streamcad.engines.gate import run_gate, softmax

    if not len(calibration) or not len(test):
        raise ConfigError(f"calibration {len(calibration)} and test {len(test)} images; expected both > 0")
    ref = _session(model)
    a = _outputs(ref, test)
    pa = softmax(a["logits"])
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="streamcad-int8-") as tmp:
        for name, ops in variants.items():
            t0 = time.perf_counter()
            q = quantize(model, Path(tmp) / f"{name}.onnx", calibration, ops)
            qs = _session(q)
            b = _outputs(qs, test)
            gate = run_gate(pa, softmax(b["logits"]), labels)
            tf, tq = _times([ref, qs], test[:1], rounds)
            emb = np.linalg.norm(b["embedding"] - a["embedding"], axis=1) / np.maximum(np.linalg.norm(a["embedding"], axis=1), 1e-12)
            out[name] = {
                "op_types_to_quantize": ops or "all ONNX Runtime quantises",
                "size_mb": q.stat().st_size / 1e6,
                "quantize_s": time.perf_counter() - t0,
                "gate": gate.to_dict(),
                "embedding_rel_diff_median": float(np.median(emb)), "embedding_rel_diff_max": float(emb.max()),
                "saliency_max_abs_diff": float(np.abs(b["saliency"] - a["saliency"]).max()),
                "latency_ms": {"fp32_median": float(np.median(tf)), "fp32_p99": float(np.quantile(tf, 0.99)),
                               "int8_median": float(np.median(tq)), "int8_p99": float(np.quantile(tq, 0.99)),
                               "speedup_median": float(np.median(tf) / np.median(tq)), "rounds": rounds},
            }
            log.info("int8 %s: %s; embedding %.1f%% median change; %.2f -> %.2f ms", name, gate.summary(),
                     100 * out[name]["embedding_rel_diff_median"], np.median(tf), np.median(tq))
    return out


def _images(items: list[tuple], spec) -> np.ndarray:
    import cv2

    from streamcad.preprocess import preprocess_batch

    imgs = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p, *_ in items]
    bad = [str(p) for (p, *_), im in zip(items, imgs, strict=True) if im is None]
    if bad:
        raise ConfigError(f"cannot read {len(bad)} images, first {bad[0]}; expected readable grayscale images")
    return preprocess_batch(imgs, spec)


def main(argv: list[str] | None = None) -> int:
    from streamcad.manifest import read_manifest
    from streamcad.train.ood import breast_items

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, help="MODEL.onnx with its manifest (its test fold is held out here)")
    p.add_argument("--calibration", type=int, default=128, help="calibration images, spread over training folds 1-4")
    p.add_argument("--rounds", type=int, default=200, help="interleaved timing calls per graph")
    p.add_argument("--root", default=None, help="data root (default ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/int8-screen.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    m = read_manifest(args.model)
    test_fold = m.training_data.get("test_fold", 0)
    train = [f for f in range(5) if f != test_fold]
    cal_items = breast_items(("busi", "busbra"), train, args.root)
    cal_items = [cal_items[i] for i in np.linspace(0, len(cal_items) - 1, args.calibration).astype(int)]
    test_items = breast_items(("busi", "busbra"), [test_fold], args.root)
    lesion = [it for it in test_items if it[1] != "normal"]  # the AUC is benign vs malignant, as reported
    spec = m.spec()
    res = screen(args.model, _images(cal_items, spec), _images(lesion, spec),
                 np.array([it[1] == "malignant" for it in lesion], np.int64), rounds=args.rounds)
    doc = {"schema": 1, "model": args.model.name, "model_sha256": m.sha256,
           "calibration": f"{len(cal_items)} images of folds {train} (both datasets, evenly spread), as they are",
           "test": f"{len(lesion)} benign and malignant images of fold {test_fold} (both datasets), as they are",
           "variants": res, "wall_s": time.perf_counter() - t0, "machine": machine_info(),
           "command": f"python -m streamcad.benchmarks.int8_screen {args.model} --calibration {args.calibration} "
                      f"--rounds {args.rounds} --out {args.out}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for name, v in res.items():
        g, lat = v["gate"], v["latency_ms"]
        print(f"{name:5s} gate {'PASS' if g['passed'] else 'FAIL'}: max prob diff {g['max_prob_diff']:.3f}, flips "
              f"{g['flip_rate']:.1%}, AUC {g['auc_reference']:.3f} -> {g['auc_candidate']:.3f}; embedding "
              f"{v['embedding_rel_diff_median']:.1%}; {lat['fp32_median']:.2f} -> {lat['int8_median']:.2f} ms "
              f"(x{lat['speedup_median']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
