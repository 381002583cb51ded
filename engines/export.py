"""`streamcad export`: a classifier checkpoint -> ONNX + manifest, refused unless it matches PyTorch.

    checkpoint.pt (plain dict: model_config, model, preprocess, temperature, metrics, train_config)
      --streamcad.nets.build_model(**model_config) + load_state_dict(strict)--> nn.Module (eval)
      --wrap: logits / T (temperature baked in)--> torch.onnx.export (opset >= 17, dynamic batch)
          input 'input' (N, 1, S, S) float32 -> outputs 'logits' (N, 3), 'saliency' (N, 1, h, w),
          'embedding' (N, D) (streamcad.nets.forward_gate: pooled stage maps + the classifier's
          embedding, one backbone pass; what the runtime's out-of-domain gate scores)
      --onnx.checker (full check)-->
      --parity on REAL frames (engines.gate.load_gate_frames, letterboxed by streamcad.preprocess):
          ONNX Runtime FP32 vs PyTorch FP32: max |p_ort - p_torch| <= 1e-4 and identical argmax,
          embedding max |e_ort - e_torch| <= 1e-3 x max |e_torch|
      --> engines/models/NAME.onnx + NAME.json (streamcad.manifest.write_manifest)

A failed check removes the ONNX file and exits non-zero with the numbers. Run:

    streamcad export runs/finetune/best.pt --out engines/models/streamcad-small.onnx

torch and onnx are imported inside the functions, so `streamcad --help` never loads them.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamcad.checkpoint import read_classifier
from streamcad.engines.gate import CLASS_NAMES, load_gate_frames, softmax
from streamcad.errors import ArtifactError, ConfigError
from streamcad.preprocess import PreprocessSpec

__all__ = [
    "HELP",
    "add_arguments",
    "run",
    "ParityResult",
    "load_classifier",
    "export_onnx",
    "check_parity",
    "export_module",
    "export_checkpoint",
    "PARITY_TOLERANCE",
    "MIN_OPSET",
]

log = logging.getLogger(__name__)

HELP = "export a training checkpoint to ONNX with a parity check"
MIN_OPSET = 17  # LayerNormalization is a native op from 17 on (TensorRT parses it without a plugin)
PARITY_TOLERANCE = 1e-4  # FP32 vs FP32: only kernel rounding differs; a real export bug is >> 1e-4
PARITY_BATCH = 24  # chunks of 24 plus a remainder exercise the dynamic batch axis
# embedding vs PyTorch, relative to its largest magnitude: the gate's threshold sits several
# standard deviations of the training scores away, far beyond what 1e-3 relative moves it
EMBEDDING_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    n: int
    max_prob_diff: float
    argmax_mismatches: int
    max_saliency_diff: float  # reported, not gated: saliency is a display aid, max-normalised per image
    tolerance: float
    frames: str  # where the real frames came from
    embedding_rel_diff: float | None = None  # max |e_onnx - e_torch| / max |e_torch|; None: no embedding output
    embedding_dim: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        emb = (
            f", embedding (D={self.embedding_dim}) max relative diff {self.embedding_rel_diff:.3e} (tolerance {EMBEDDING_TOLERANCE:g})"
            if self.embedding_rel_diff is not None
            else ", no embedding output"
        )
        return (
            f"parity {verdict} on {self.n} real frames ({self.frames}): max |p_onnx - p_torch| = "
            f"{self.max_prob_diff:.3e} (tolerance {self.tolerance:g}), argmax mismatches {self.argmax_mismatches}, "
            f"max saliency diff {self.max_saliency_diff:.3e}{emb}"
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="classifier checkpoint (.pt) from `streamcad train finetune`")
    p.add_argument("--out", type=Path, default=None, help="output NAME.onnx (default: engines/models/<checkpoint stem>.onnx)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET}; default {MIN_OPSET})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--parity-images", type=Path, default=None, help="folder of real images for the parity check")
    src.add_argument("--data-npz", type=Path, default=None, help="packed real frames (train.data.save_npz) for the parity check")
    p.add_argument("--parity-frames", type=int, default=64, help="number of real frames in the parity check (default 64)")


def run(args: argparse.Namespace) -> int:
    out = args.out or Path("engines/models") / (Path(args.checkpoint).stem + ".onnx")
    manifest, parity = export_checkpoint(
        args.checkpoint,
        out,
        opset=args.opset,
        images_dir=args.parity_images,
        data_npz=args.data_npz,
        n_frames=args.parity_frames,
    )
    log.info("%s", parity.summary())
    from rich.console import Console

    Console().print(
        f"[green]exported[/green] {out} (sha256 {manifest.sha256[:16]}…, S={manifest.input_size}, "
        f"opset {manifest.format_version})\n{parity.summary()}"
    )
    return 0


# ----------------------------------------------------------------------------- steps


def load_classifier(checkpoint: str | os.PathLike) -> tuple[Any, dict, PreprocessSpec, float]:
    """Checkpoint path -> (model in eval mode on CPU, checkpoint dict, PreprocessSpec, temperature)."""
    from streamcad.checkpoint import load_checkpoint  # ArtifactError for missing / unreadable files
    from streamcad.nets import build_model

    path = Path(checkpoint)
    ckpt = load_checkpoint(path, map_location="cpu")
    info = read_classifier(ckpt, path.name)  # the one checkpoint contract (streamcad.checkpoint)
    try:
        model = build_model(**ckpt["model_config"])
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path.name}: weights do not fit model_config {ckpt['model_config']}: {exc}") from exc
    return model.eval(), ckpt, info.spec(), info.temperature


def _temperature_wrapper(model: Any, temperature: float) -> Any:
    import torch

    from streamcad.nets import forward_gate

    class TemperatureScaled(torch.nn.Module):
        """(B, 1, S, S) -> (logits / T (B, 3), saliency (B, 1, h, w), embedding (B, D)): calibration
        baked into the graph; the embedding is streamcad.nets.forward_gate's (the out-of-domain gate's input)."""

        def __init__(self, net: torch.nn.Module, t: float) -> None:
            super().__init__()
            self.net = net
            self.inv_t = 1.0 / t  # a multiply folds into the last Gemm's constants

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, sal, emb = forward_gate(self.net, x)
            return logits * self.inv_t, sal, emb

    return TemperatureScaled(model, temperature).eval()


def export_onnx(module: Any, example: np.ndarray, out: str | os.PathLike, opset: int = MIN_OPSET) -> Path:
    """Export (B,1,S,S) -> (logits, saliency[, embedding]) to ONNX with a dynamic batch axis, then
    onnx.checker. A module returning three tensors gets the third as output 'embedding' (B, D)."""
    import warnings

    import onnx
    import torch

    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}; expected >= {MIN_OPSET}")
    out = Path(out)
    with torch.no_grad():
        probe = module(torch.from_numpy(np.ascontiguousarray(example)))
    n_out = len(probe)
    if n_out not in (2, 3):
        raise ArtifactError(f"the module returns {n_out} tensors; expected (logits, saliency) or (logits, saliency, embedding)")
    names = ["logits", "saliency", "embedding"][:n_out]
    dyn = {"input": {0: "N"}, **{n: {0: "N"} for n in names}}
    with warnings.catch_warnings(), torch.no_grad():
        # Tracer warnings about Python ints from shapes: S is static by design; parity checks the result.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            # dynamo=False: the TorchScript exporter needs no onnxscript; the parity check below
            # is what vouches for the graph, whichever exporter wrote it.
            torch.onnx.export(
                module,
                (torch.from_numpy(np.ascontiguousarray(example)),),
                str(out),
                input_names=["input"],
                output_names=names,
                opset_version=opset,
                dynamic_axes=dyn,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # torch.onnx raises many types (OnnxExporterError, RuntimeError, ...)
            out.unlink(missing_ok=True)
            raise ArtifactError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    try:
        proto = onnx.load(str(out))
        if n_out == 3:  # the tracer leaves D symbolic ('Concat..._dim_1'); D is fixed: declare it
            emb_out = next(o for o in proto.graph.output if o.name == "embedding")
            emb_out.type.tensor_type.shape.dim[1].dim_value = int(probe[2].shape[1])
            onnx.save(proto, str(out))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors, protobuf errors
        out.unlink(missing_ok=True)
        raise ArtifactError(f"onnx.checker rejects the exported graph: {exc}") from exc
    return out


def check_parity(
    module: Any,
    onnx_path: str | os.PathLike,
    batch: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
    frames: str = "",
) -> ParityResult:
    """Run the same real frames (N, 1, S, S) through PyTorch FP32 and ONNX Runtime FP32 (CPU).

    Passes when every softmax probability agrees within `tolerance` and no argmax differs.
    The ONNX side is the runtime's own backend (streamcad.backends 'onnxruntime'), so the
    I/O contract is checked on the way.
    """
    import torch

    from streamcad.backends import load_backend

    logits_t, logits_o, sal_diff = [], [], 0.0
    emb_t, emb_o, has_emb = [], [], True
    with load_backend("onnxruntime", onnx_path, providers=("cpu",)) as ort_be, torch.no_grad():
        for i in range(0, batch.shape[0], PARITY_BATCH):
            chunk = np.ascontiguousarray(batch[i : i + PARITY_BATCH])  # (n, 1, S, S)
            lt, st, *et = module(torch.from_numpy(chunk))
            out = ort_be.infer(chunk)
            logits_t.append(lt.numpy())
            logits_o.append(out["logits"])
            sal_diff = max(sal_diff, float(np.max(np.abs(out["saliency"] - st.numpy()))))
            if et and "embedding" in out:
                emb_t.append(et[0].numpy())
                emb_o.append(out["embedding"])
            else:
                has_emb = False  # a module without an embedding, or a graph without the output
    p_t = softmax(np.concatenate(logits_t))
    p_o = softmax(np.concatenate(logits_o))
    finite = bool(np.all(np.isfinite(p_o)))
    max_diff = float(np.max(np.abs(p_o - p_t))) if finite else float("inf")
    mismatches = int(np.count_nonzero(np.argmax(p_o, axis=1) != np.argmax(p_t, axis=1))) if finite else int(p_o.shape[0])
    emb_diff = emb_dim = None
    emb_ok = True
    if has_emb and emb_t:
        e_t, e_o = np.concatenate(emb_t), np.concatenate(emb_o)
        emb_dim = int(e_t.shape[1])
        emb_diff = float(np.max(np.abs(e_o - e_t)) / max(float(np.max(np.abs(e_t))), 1e-12))
        emb_ok = bool(np.all(np.isfinite(e_o))) and emb_diff <= EMBEDDING_TOLERANCE
        if not np.isfinite(emb_diff):
            emb_diff = float("inf")
    return ParityResult(
        passed=finite and max_diff <= tolerance and mismatches == 0 and emb_ok,
        n=int(p_t.shape[0]),
        max_prob_diff=max_diff,
        argmax_mismatches=mismatches,
        max_saliency_diff=sal_diff,
        tolerance=tolerance,
        frames=frames,
        embedding_rel_diff=emb_diff,
        embedding_dim=emb_dim,
    )


def _jsonable(x: Any) -> Any:
    """Checkpoint values (numpy / torch scalars, tuples, Paths) -> plain JSON types."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    item = getattr(x, "item", None)
    if callable(item) and getattr(x, "ndim", 1) == 0:
        return item()
    return str(x)


def export_module(
    module: Any,
    batch: np.ndarray,
    out: str | os.PathLike,
    opset: int = MIN_OPSET,
    tolerance: float = PARITY_TOLERANCE,
    frames: str = "",
    metadata: dict[str, str] | None = None,
) -> ParityResult:
    """Export `module` ((B,1,S,S) -> (logits, saliency)) to `out` and check parity on `batch` (real frames).

    The ONNX is written to a temporary name and moved to `out` only after the checker and the
    parity check pass, so a failed export never replaces a good model. Failure -> ArtifactError
    with the numbers, and no file left behind.
    """
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.onnx")
    try:
        export_onnx(module, batch[:2], tmp, opset)
        if metadata:
            proto = onnx.load(str(tmp))
            for k, v in metadata.items():
                proto.metadata_props.add(key=k, value=v)
            onnx.save(proto, str(tmp))
        parity = check_parity(module, tmp, batch, tolerance, frames)
        log.info("%s", parity.summary())
        if not parity.passed:
            raise ArtifactError(
                f"export FAILED the parity check, {tmp.name} removed: max |p_onnx - p_torch| = "
                f"{parity.max_prob_diff:.3e} (tolerance {tolerance:g}), argmax mismatches "
                f"{parity.argmax_mismatches}/{parity.n} on real frames from {frames or 'the given batch'}, "
                f"embedding max relative diff {parity.embedding_rel_diff} (tolerance {EMBEDDING_TOLERANCE:g})"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return parity


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    opset: int = MIN_OPSET,
    images_dir: str | os.PathLike | None = None,
    data_npz: str | os.PathLike | None = None,
    n_frames: int = 64,
    tolerance: float = PARITY_TOLERANCE,
    data_root: str | os.PathLike | None = None,
) -> tuple[Any, ParityResult]:
    """Checkpoint -> verified ONNX + manifest -> (Manifest, ParityResult). ArtifactError on any failure.

    Loads the classifier, bakes in the temperature, then export_module (checker + parity on real
    frames), then the manifest (sha256, input spec, preprocessing, training data, metrics,
    versions, git commit, parity numbers).
    """
    from streamcad.manifest import sha256_file, write_manifest

    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out}: expected a NAME.onnx path")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}; expected >= {MIN_OPSET}")
    model, ckpt, spec, temperature = load_classifier(checkpoint)
    frames = load_gate_frames(spec, n=n_frames, images_dir=images_dir, data_npz=data_npz, data_root=data_root)
    module = _temperature_wrapper(model, temperature)
    meta = {"class_names": ",".join(CLASS_NAMES), "temperature": repr(temperature),
            "model": str(ckpt["model_config"].get("name", "")), "producer": "streamcad export"}
    parity = export_module(module, frames.batch, out, opset, tolerance, frames.source, meta)
    info = read_classifier(ckpt, Path(checkpoint).name)
    metrics = _jsonable(dict(info.metrics))
    threshold = info.threshold  # what fine-tuning wrote ('threshold'; older: metrics.operating_threshold)
    extra = {}
    if float((ckpt.get("train_config") or {}).get("zoom") or 0) > 0:  # trained on the lesion zoom: scored on two views
        from streamcad.zoom import ZoomSpec

        extra = {"zoom": ZoomSpec().to_dict(), "saliency_kind": "lesion_probability"}
    try:
        manifest = write_manifest(
            out,
            **extra,
            preprocess=spec,
            precision="fp32",
            temperature=temperature,
            operating_threshold=threshold if isinstance(threshold, (int, float)) else None,
            model={"name": ckpt["model_config"].get("name"), "config": _jsonable(ckpt["model_config"]),
                   "params": int(sum(p.numel() for p in model.parameters()))},
            training_data=_jsonable(info.training_data()),
            metrics=metrics,
            source={"file": Path(checkpoint).name, "sha256": sha256_file(checkpoint)},
            notes={"parity": parity.to_dict(), "exporter": "torch.onnx.export(dynamo=False)"},
        )
    except Exception:
        out.unlink(missing_ok=True)  # no ONNX without its manifest
        raise
    return manifest, parity
