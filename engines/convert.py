"""`streamcad convert`: a verified ONNX model -> a TensorRT engine, gated against ONNX Runtime FP32.

    NAME.onnx + NAME.json (verified: sha256, contract)
      --trt.OnnxParser--> network (explicit batch: the only mode in TensorRT 10)
      --builder config: FP16 flag (refused, never downgraded, when the GPU lacks fast FP16),
        optimization profile on 'input' min=1 / opt=1 / max=max_batch, timing cache from disk-->
      --build_serialized_network--> engine bytes
      --accuracy gate on a fixed set of real frames (engines.gate): engine vs ONNX Runtime FP32
         pass -> NAME.sm<CC>-trt<X.Y>-<precision>.engine + .json (cache key, gate result)
         fail -> nothing written (exit 1), unless --force, which writes it and records the failure
      --timing cache saved back to disk (faster rebuilds)

Run on the GPU machine that will serve the engine:

    streamcad convert engines/models/streamcad-small.onnx --fp16 --max-batch 8

Requires TensorRT >= 10, < 11 (TensorRT 11 removed BuilderFlag.FP16: weakly typed FP16 builds
must then come from an FP16 ONNX graph) and cuda-python. Both are imported inside run().
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamcad.engines.gate import GateResult, load_gate_frames, run_gate, softmax
from streamcad.errors import ArtifactError, BackendError, ConfigError

__all__ = ["HELP", "add_arguments", "run", "build_engine", "gate_engine", "convert_onnx", "DEFAULT_MAX_BATCH"]

log = logging.getLogger(__name__)

HELP = "build a TensorRT engine from ONNX with an accuracy gate"
DEFAULT_MAX_BATCH = 8  # the pipeline batches at most a few probes' frames; larger profiles cost build time
WORKSPACE_BYTES = 1 << 30  # 1 GiB of scratch for tactic selection: plenty for a < 20M-parameter CNN


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", type=Path, help="NAME.onnx written by `streamcad export` (its manifest must sit beside it)")
    p.add_argument("--fp16", action="store_true", help="build with FP16 kernels (fails if the GPU has no fast FP16)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help=f"largest batch the engine accepts (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: beside the ONNX)")
    p.add_argument("--force", action="store_true", help="write the engine even if it fails the accuracy gate (recorded in its manifest)")
    p.add_argument("--timing-cache", type=Path, default=None,
                   help="TensorRT timing cache file, loaded if present and saved after the build (default: OUT/timing.cache)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--gate-images", type=Path, default=None, help="folder of real images for the accuracy gate")
    src.add_argument("--data-npz", type=Path, default=None, help="packed real frames (train.data.save_npz) for the gate")
    p.add_argument("--gate-frames", type=int, default=200, help="number of real frames in the gate (default 200)")
    p.add_argument("--device", default="cuda", help="CUDA device to build on: 'cuda' or 'cuda:i'")


def run(args: argparse.Namespace) -> int:
    engine_path, manifest, gate = convert_onnx(
        args.onnx,
        fp16=args.fp16,
        max_batch=args.max_batch,
        out_dir=args.out,
        force=args.force,
        timing_cache=args.timing_cache,
        gate_images=args.gate_images,
        data_npz=args.data_npz,
        gate_frames=args.gate_frames,
        device=args.device,
    )
    from rich.console import Console

    colour = "green" if gate.passed else "red"
    Console().print(
        f"[{colour}]{'built' if gate.passed else 'built (FORCED past a failed gate)'}[/{colour}] {engine_path} "
        f"({manifest.precision}, {manifest.gpu_name}, sm {manifest.compute_capability}, TensorRT {manifest.tensorrt_version})\n"
        f"{gate.summary()}"
    )
    return 0


# ----------------------------------------------------------------------------- build


def build_engine(
    onnx_path: Path,
    input_size: int,
    fp16: bool,
    max_batch: int,
    compute_capability: str,
    timing_cache: Path | None,
) -> bytes:
    """Parse the ONNX and build a serialized engine (TensorRT 10 builder API) -> engine bytes."""
    from streamcad.backends.tensorrt import INPUT_NAME, fp16_supported, import_tensorrt, trt_logger

    trt = import_tensorrt()
    if fp16 and int(trt.__version__.split(".")[0]) >= 11:
        raise BackendError(
            f"TensorRT {trt.__version__}: BuilderFlag.FP16 and weak typing were removed in TensorRT 11; "
            "this converter needs TensorRT 10.x (pip install 'tensorrt>=10,<11')"
        )
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    if fp16:
        # Refuse rather than silently build FP32. platform_has_fast_fp16 is deprecated since
        # TensorRT 10.5, so the compute capability rule decides; the flag is consulted while it exists.
        legacy = getattr(builder, "platform_has_fast_fp16", True)
        if not fp16_supported(compute_capability) or not legacy:
            raise BackendError(
                f"--fp16 requested but this GPU (sm {compute_capability}) has no fast native FP16; "
                "refusing to build FP32 instead: drop --fp16 to build an FP32 engine on purpose"
            )
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch; the old flag is deprecated
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT's ONNX parser rejects {onnx_path.name}: {errors}")
    inp = network.get_input(0)
    if network.num_inputs != 1 or inp.name != INPUT_NAME:
        raise ArtifactError(f"{onnx_path.name}: network inputs {[network.get_input(i).name for i in range(network.num_inputs)]}; expected ['{INPUT_NAME}']")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    S = input_size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 1, S, S), (1, 1, S, S), (max_batch, 1, S, S))  # min, opt (live: 1 frame), max
    if config.add_optimization_profile(profile) < 0:
        raise BackendError(f"TensorRT refused the optimization profile 1..{max_batch} x (1, {S}, {S})")

    cache_bytes = b""
    if timing_cache is not None and timing_cache.is_file():
        cache_bytes = timing_cache.read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: never reuse timings from another GPU
        log.warning("timing cache %s was made on another GPU/TensorRT: building with an empty cache (slower build, same engine quality)",
                    timing_cache)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    log.info("engine built in %.1f s", time.perf_counter() - t0)
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = timing_cache.with_name(timing_cache.name + ".tmp")
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        os.replace(tmp, timing_cache)
    return bytes(memoryview(serialized))


# ----------------------------------------------------------------------------- gate


def gate_engine(
    engine_bytes: bytes,
    onnx_path: Path,
    batch: np.ndarray,
    labels_binary: np.ndarray | None,
    device_index: int = 0,
) -> GateResult:
    """Engine vs ONNX Runtime FP32 (CPU) on the same real frames (N, 1, S, S) -> GateResult."""
    from streamcad.backends import load_backend
    from streamcad.backends.tensorrt import TrtEngineRunner

    ref, cand = [], []
    runner = TrtEngineRunner(engine_bytes, device_index, where="candidate engine")
    try:
        with load_backend("onnxruntime", onnx_path, providers=("cpu",)) as ort_be:
            step = runner.max_batch
            for i in range(0, batch.shape[0], step):
                chunk = np.ascontiguousarray(batch[i : i + step])  # (n <= max_batch, 1, S, S)
                ref.append(ort_be.infer(chunk)["logits"])
                cand.append(runner.infer(chunk)["logits"])
    finally:
        runner.close()
    return run_gate(softmax(np.concatenate(ref)), softmax(np.concatenate(cand)), labels_binary)


# ----------------------------------------------------------------------------- convert


def convert_onnx(
    onnx_path: str | os.PathLike,
    fp16: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    timing_cache: str | os.PathLike | None = None,
    gate_images: str | os.PathLike | None = None,
    data_npz: str | os.PathLike | None = None,
    gate_frames: int = 200,
    device: str = "cuda",
) -> tuple[Path, Any, GateResult]:
    """ONNX (+ manifest) -> gated engine + manifest -> (engine path, Manifest, GateResult)."""
    from streamcad.backends.tensorrt import current_key, device_index, engine_filename
    from streamcad.manifest import read_manifest, verify_artifact, write_manifest

    onnx_path = Path(onnx_path)
    if max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch}; expected >= 1")
    src = read_manifest(onnx_path)
    if src.format != "onnx":
        raise ArtifactError(f"{onnx_path.name}: manifest format {src.format!r}; expected an ONNX model from `streamcad export`")
    src_sha = verify_artifact(onnx_path, src)
    spec = src.spec()
    index = device_index(device)
    precision = "fp16" if fp16 else "fp32"
    key = current_key(precision, index)  # imports TensorRT + cuda-python; BackendError without them / a GPU
    out = Path(out_dir) if out_dir is not None else onnx_path.parent
    out.mkdir(parents=True, exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache is not None else out / "timing.cache"

    t0 = time.perf_counter()
    engine_bytes = build_engine(onnx_path, spec.size, fp16, max_batch, key.compute_capability, cache_path)
    build_s = time.perf_counter() - t0
    frames = load_gate_frames(spec, n=gate_frames, images_dir=gate_images, data_npz=data_npz)
    gate = gate_engine(engine_bytes, onnx_path, frames.batch, frames.labels_binary, index)
    log.info("%s", gate.summary())
    if not gate.passed and not force:
        raise ArtifactError(
            f"engine for {onnx_path.name} FAILED the accuracy gate vs ONNX Runtime FP32 on {gate.n} real frames "
            f"({frames.source}): {'; '.join(gate.failures)}. Nothing written; --force writes it anyway and records this"
        )
    if not gate.passed:
        log.warning("writing %s engine despite a FAILED gate (--force): %s", precision, "; ".join(gate.failures))

    engine_path = out / engine_filename(onnx_path.stem, key)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(engine_bytes)
    os.replace(tmp, engine_path)
    S = spec.size
    try:
        manifest = write_manifest(
            engine_path,
            format="tensorrt",
            input={"name": "input", "shape": ["N", 1, S, S], "dtype": "float32"},
            preprocess=spec,
            format_version=key.tensorrt_version,
            precision=precision,
            tensorrt_version=key.tensorrt_version,
            gpu_name=key.gpu_name,
            compute_capability=key.compute_capability,
            gate={**gate.to_dict(), "reference": "onnxruntime fp32 cpu", "frames": frames.source, "forced": bool(force and not gate.passed)},
            temperature=src.temperature,
            operating_threshold=src.operating_threshold,
            outputs=src.outputs,
            ood=src.ood,  # the out-of-domain gate travels with the model (fitted on its FP32 embedding)
            saliency_kind=src.saliency_kind,  # a lesion map stays a lesion map (the runtime's lesion box)
            zoom=src.zoom,  # and a two-look model keeps its second look (each pass is the gated graph)
            model=src.model,
            training_data=src.training_data,
            metrics=src.metrics,
            source={"file": onnx_path.name, "sha256": src_sha},
            notes={"max_batch": max_batch, "profile": {"min": 1, "opt": 1, "max": max_batch},
                   "timing_cache": str(cache_path), "build_seconds": round(build_s, 1)},
        )
    except Exception:
        engine_path.unlink(missing_ok=True)  # no engine without its manifest
        raise
    return engine_path, manifest, gate
