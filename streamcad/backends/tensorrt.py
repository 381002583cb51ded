"""TensorRT backend: a serialized engine built by `streamcad convert`, run through cuda-python.

    NAME.sm90-trt10.3-fp16.engine + NAME.sm90-trt10.3-fp16.json (manifest)
      --verify: sha256 (streamcad.manifest) + cache key (file name == manifest == this GPU/TRT)-->
      --trt.Runtime.deserialize_cuda_engine--> ICudaEngine --create_execution_context-->
    float32 (N, 1, S, S) --np.copyto--> pinned host buffer --cudaMemcpyAsync H2D--> device buffer
      --context.execute_async_v3(own stream)--> device outputs --cudaMemcpyAsync D2H--> pinned host
      --cudaStreamSynchronize--> {'logits': (N, 3), 'saliency': (N, 1, h, w)} float32 copies

Optionally one batch size (`cuda_graph_batch`) is captured once as a CUDA graph (copies + engine
launch) on its own execution context and replayed with a single cudaGraphLaunch.

Why cuda-python and not pycuda: NVIDIA's own TensorRT samples (samples/python/common_runtime.py)
moved from pycuda to cuda-python; cuda-python is a thin, versioned binding of the CUDA runtime
API that works on the primary context the CUDA runtime (and PyTorch) already use, whereas
pycuda.autoinit creates its own driver context, and a pycuda context next to PyTorch in one
process is a known source of hangs and "invalid resource handle" errors. cuda-python calls
return tuples `(err, value...)`; every one is checked here and turned into a BackendError that
names the call.

Why the cache key: a TensorRT engine is compiled for one GPU architecture and one TensorRT
version; loading it elsewhere either fails deep inside TensorRT or runs with wrong tactics.
The key (GPU name, compute capability, TensorRT version, precision) is in the file name and the
manifest; a mismatch with the running GPU/TensorRT is refused with an ArtifactError naming it.

Nothing here imports tensorrt or cuda-python at module level: they are imported when a backend
(or the converter) needs them, so `import streamcad.backends.tensorrt` costs nothing.
TensorRT >= 10 (name-based I/O tensor API) is required.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
import numpy as np

from streamcad.backends.base import (
    EMBEDDING_NAME,
    N_CLASSES,
    OUTPUT_NAMES,
    Backend,
    BackendOptions,
    register_backend,
)
from streamcad.errors import ArtifactError, BackendError
from streamcad.extras import install_command

__all__ = [
    "EngineKey",
    "TensorRTBackend",
    "TensorRTOptions",
    "TrtEngineRunner",
    "engine_filename",
    "parse_engine_filename",
    "manifest_key",
    "key_mismatches",
    "check_engine_key",
    "fp16_supported",
    "import_cudart",
    "import_tensorrt",
    "current_key",
    "device_index",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
_TAG_RE = re.compile(r"^(?P<stem>.+)\.sm(?P<cc>\d{2,3})-trt(?P<trt>\d+\.\d+)-(?P<precision>fp16|fp32)\.(?:engine|plan)$")
_TRT_LOGGER: Any = None  # one trt.Logger per process, as TensorRT recommends


# ----------------------------------------------------------------------------- the cache key (pure Python)


@dataclass(frozen=True)
class EngineKey:
    """What an engine is compiled for. compute_capability '8.6'; tensorrt_version as trt.__version__."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: str  # 'fp16' | 'fp32'

    @property
    def trt_major_minor(self) -> str:
        return ".".join(self.tensorrt_version.split(".")[:2])

    @property
    def tag(self) -> str:
        """'sm90-trt10.3-fp16': the part of the engine file name that carries the key."""
        major, minor = self.compute_capability.split(".")
        return f"sm{major}{minor}-trt{self.trt_major_minor}-{self.precision}"


def _check_cc(cc: str) -> str:
    if not re.fullmatch(r"\d{1,2}\.\d", str(cc)):
        raise ArtifactError(f"compute capability {cc!r}; expected 'major.minor' such as '8.6' or '9.0'")
    return str(cc)


def engine_filename(stem: str, key: EngineKey) -> str:
    """('streamcad-small', key) -> 'streamcad-small.sm90-trt10.3-fp16.engine'."""
    _check_cc(key.compute_capability)
    if key.precision not in ("fp16", "fp32"):
        raise ArtifactError(f"engine precision {key.precision!r}; expected 'fp16' or 'fp32'")
    return f"{stem}.{key.tag}.engine"


def parse_engine_filename(path: str | Path) -> dict[str, str]:
    """'NAME.sm86-trt10.3-fp16.engine' -> {'stem', 'compute_capability': '8.6', 'trt': '10.3', 'precision'}.

    The last digit of the sm number is the minor version (sm86 -> 8.6, sm90 -> 9.0, sm120 -> 12.0).
    """
    name = Path(path).name
    m = _TAG_RE.match(name)
    if m is None:
        raise ArtifactError(
            f"engine file name {name!r} carries no cache key; expected NAME.sm<CC>-trt<MAJOR.MINOR>-<fp16|fp32>.engine "
            "as written by `streamcad convert`"
        )
    cc = m["cc"]
    return {"stem": m["stem"], "compute_capability": f"{cc[:-1]}.{cc[-1]}", "trt": m["trt"], "precision": m["precision"]}


def manifest_key(manifest: Any) -> EngineKey:
    """The EngineKey recorded in an engine manifest (streamcad.manifest.Manifest)."""
    missing = [f for f in ("gpu_name", "compute_capability", "tensorrt_version") if not getattr(manifest, f, None)]
    if missing:
        raise ArtifactError(f"engine manifest {getattr(manifest, 'file', '?')} lacks {missing}; rebuild with `streamcad convert`")
    return EngineKey(
        gpu_name=str(manifest.gpu_name),
        compute_capability=_check_cc(manifest.compute_capability),
        tensorrt_version=str(manifest.tensorrt_version),
        precision=str(manifest.precision),
    )


def key_mismatches(built: EngineKey, current: EngineKey) -> list[str]:
    """Human-readable differences between the key an engine was built for and this machine's.

    TensorRT engines are only guaranteed to load with the exact TensorRT version that built
    them, so the full version is compared; the GPU model is compared too (same architecture
    but another GPU model gives tactics tuned for the wrong chip).
    """
    out = []
    if built.compute_capability != current.compute_capability:
        out.append(f"compute capability: engine built for sm {built.compute_capability}, this GPU is sm {current.compute_capability}")
    if built.gpu_name != current.gpu_name:
        out.append(f"GPU: engine built on {built.gpu_name!r}, running on {current.gpu_name!r}")
    if built.tensorrt_version != current.tensorrt_version:
        out.append(f"TensorRT: engine built with {built.tensorrt_version}, installed {current.tensorrt_version}")
    return out


def check_engine_key(path: str | Path, manifest: Any, current: EngineKey | None) -> EngineKey:
    """Refuse an engine whose file name, manifest and (if given) the running GPU/TensorRT disagree.

    -> the manifest's EngineKey. ArtifactError names every mismatch and how to fix it.
    """
    name = Path(path).name
    from_name = parse_engine_filename(path)
    built = manifest_key(manifest)
    renamed = []
    if from_name["compute_capability"] != built.compute_capability:
        renamed.append(f"compute capability {from_name['compute_capability']} (name) vs {built.compute_capability} (manifest)")
    if from_name["trt"] != built.trt_major_minor:
        renamed.append(f"TensorRT {from_name['trt']} (name) vs {built.tensorrt_version} (manifest)")
    if from_name["precision"] != built.precision:
        renamed.append(f"precision {from_name['precision']} (name) vs {built.precision} (manifest)")
    if renamed:
        raise ArtifactError(f"{name}: file name and manifest disagree ({'; '.join(renamed)}): renamed or wrong manifest")
    if current is not None:
        diff = key_mismatches(built, current)
        if diff:
            raise ArtifactError(
                f"{name}: engine cache key mismatch: {'; '.join(diff)}. Rebuild it here with "
                f"`streamcad convert {from_name['stem']}.onnx --fp16` (engines are specific to GPU and TensorRT version)"
            )
    return built


def fp16_supported(compute_capability: str) -> bool:
    """Fast native FP16 per CUDA's arithmetic-throughput table: sm 5.3, 6.0, 6.2 and 7.0+.

    (sm 6.1, consumer Pascal, runs FP16 at 1/64 rate: not 'fast'.) Replaces the deprecated
    IBuilder.platform_has_fast_fp16 (deprecated in TensorRT 10.5, removed in 11).
    """
    major, minor = (int(x) for x in _check_cc(compute_capability).split("."))
    return major >= 7 or (major, minor) in {(5, 3), (6, 0), (6, 2)}


def unavailable_reason() -> str | None:
    """Why this backend cannot run here, checked without importing TensorRT; None when it can."""
    try:
        if importlib.util.find_spec("tensorrt") is None:
            return f"tensorrt not installed (install the 'tensorrt' extra: {install_command('tensorrt')})"
        has_cuda = importlib.util.find_spec("cuda") is not None
    except (ImportError, ValueError):
        return "tensorrt or cuda-python not importable"
    if not has_cuda:
        return f"cuda-python not installed (install the 'tensorrt' extra: {install_command('tensorrt')})"
    return None


# ----------------------------------------------------------------------------- CUDA / TensorRT plumbing


def import_tensorrt() -> Any:
    """Import tensorrt (>= 10) or raise BackendError saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"tensorrt is not installed or broken ({exc}); install the 'tensorrt' extra: {install_command('tensorrt')}") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendError(f"TensorRT {trt.__version__} is too old; this backend needs TensorRT >= 10 (name-based I/O API)")
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python >= 12.6 / 13), else `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendError(f"cuda-python is not installed ({exc}); install the 'tensorrt' extra: {install_command('tensorrt')}") from exc
    return cudart


def trt_logger(trt: Any) -> Any:
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


class CudaCalls:
    """Checked cuda-python calls: `cu('cudaMalloc', nbytes)` -> the value, or BackendError naming the call.

    cuda-python returns (err,) / (err, value) / (err, v1, v2, ...); err is a cudaError_t.
    """

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart
        self.success = cudart.cudaError_t.cudaSuccess

    def __call__(self, fn: str, *args: Any) -> Any:
        try:
            res = getattr(self.rt, fn)(*args)
        except (AttributeError, TypeError, RuntimeError) as exc:
            raise BackendError(f"tensorrt: {fn}{tuple(type(a).__name__ for a in args)} raised {type(exc).__name__}: {exc}") from exc
        err = res[0] if isinstance(res, tuple) else res
        if err != self.success:
            detail = ""
            try:
                detail = ": " + self.rt.cudaGetErrorString(err)[1].decode(errors="replace")
            except Exception:  # noqa: BLE001 - the error string is a nicety; the name below is enough
                pass
            raise BackendError(f"tensorrt: {fn} failed with {getattr(err, 'name', err)}{detail}")
        if not isinstance(res, tuple) or len(res) == 1:
            return None
        return res[1] if len(res) == 2 else res[1:]


def device_index(device: str) -> int:
    """'cuda' | 'cuda:i' -> i (0 for 'cuda'); BackendError for anything else."""
    m = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if m is None:
        raise BackendError(f"tensorrt: device={device!r}; expected 'cuda' or 'cuda:i'")
    return int(m[1] or 0)


def current_key(precision: str, device_index: int = 0) -> EngineKey:
    """The cache key of this machine: GPU name + compute capability (CUDA runtime) + TensorRT version."""
    trt = import_tensorrt()
    cu = CudaCalls(import_cudart())
    count = cu("cudaGetDeviceCount")
    if not count:
        raise BackendError("tensorrt: no CUDA GPU is visible (cudaGetDeviceCount = 0)")
    if device_index >= count:
        raise BackendError(f"tensorrt: device cuda:{device_index} requested but only {count} CUDA device(s)")
    prop = cu("cudaGetDeviceProperties", device_index)
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return EngineKey(
        gpu_name=name.rstrip("\x00").strip(),
        compute_capability=f"{prop.major}.{prop.minor}",
        tensorrt_version=str(trt.__version__),
        precision=precision,
    )


class _HostDeviceBuffer:
    """A pinned host array (cudaMallocHost, viewed as numpy) and a device buffer of the same size."""

    def __init__(self, cu: CudaCalls, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.name = name
        self.shape = shape
        self.dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        self.nbytes = count * self.dtype.itemsize
        self.row_bytes = self.nbytes // shape[0]  # bytes per batch item (batch-major, contiguous)
        self.host_ptr = int(cu("cudaMallocHost", self.nbytes))
        try:
            ptype = ctypes.POINTER(np.ctypeslib.as_ctypes_type(self.dtype))
            self.host = np.ctypeslib.as_array(ctypes.cast(self.host_ptr, ptype), (count,)).reshape(shape)
            self.device = int(cu("cudaMalloc", self.nbytes))
        except BaseException:
            cu("cudaFreeHost", self.host_ptr)
            raise

    def free(self, cu: CudaCalls) -> None:
        if self.host_ptr:
            self.host = None  # type: ignore[assignment]  # drop the numpy view before freeing its memory
            cu("cudaFree", self.device)
            cu("cudaFreeHost", self.host_ptr)
            self.host_ptr = self.device = 0


class TrtEngineRunner:
    """Runs serialized engine bytes on one GPU. No manifest checks: TensorRTBackend does those,
    and `streamcad convert` uses this directly to gate an engine before it is written.

    The engine's I/O must follow the model contract: input 'input' (N, 1, S, S) float32 with a
    dynamic batch, outputs 'logits' (N, 3) and 'saliency' (N, 1, h, w) float32.
    """

    def __init__(self, engine_bytes: bytes, device_index: int = 0, cuda_graph_batch: int | None = None, where: str = "engine") -> None:
        trt = import_tensorrt()
        self._trt = trt
        self._cu = cu = CudaCalls(import_cudart())
        self._where = where
        self._device_index = device_index
        self._buffers: dict[str, _HostDeviceBuffer] = {}
        self._stream: Any = None
        self._graph_exec: Any = None
        self._graph_context: Any = None
        self._context: Any = None
        self._engine: Any = None
        cu("cudaSetDevice", device_index)
        self._runtime = trt.Runtime(trt_logger(trt))
        engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise ArtifactError(f"{where}: TensorRT {trt.__version__} cannot deserialize this engine (see the TensorRT log above)")
        self._engine = engine
        try:
            self._setup(cuda_graph_batch)
        except BaseException:
            self.close()
            raise

    # -- setup ------------------------------------------------------------------------------

    def _io(self) -> tuple[list[str], list[str]]:
        trt, eng = self._trt, self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        return inputs, outputs

    def _setup(self, cuda_graph_batch: int | None) -> None:
        trt, eng, cu, where = self._trt, self._engine, self._cu, self._where
        inputs, outputs = self._io()
        if inputs != [INPUT_NAME]:
            raise ArtifactError(f"{where}: engine inputs {inputs}; expected exactly ['{INPUT_NAME}'] (N, 1, S, S)")
        if sorted(outputs) not in (sorted(OUTPUT_NAMES), sorted((*OUTPUT_NAMES, EMBEDDING_NAME))):
            raise ArtifactError(f"{where}: engine outputs {outputs}; expected {list(OUTPUT_NAMES)} (+ optional {EMBEDDING_NAME!r})")
        self._out_names = [*OUTPUT_NAMES, *([EMBEDDING_NAME] if EMBEDDING_NAME in outputs else [])]
        for n in inputs + outputs:
            dt = eng.get_tensor_dtype(n)
            if dt != trt.DataType.FLOAT:
                raise ArtifactError(f"{where}: tensor {n!r} has dtype {dt}; expected float32 I/O (FP16 is internal only)")
        shape = tuple(eng.get_tensor_shape(INPUT_NAME))  # (-1, 1, S, S)
        if len(shape) != 4 or shape[1] != 1 or shape[2] != shape[3] or shape[2] < 1:
            raise ArtifactError(f"{where}: input shape {shape}; expected (N, 1, S, S)")
        self.input_size = int(shape[2])
        if eng.num_optimization_profiles < 1:
            raise ArtifactError(f"{where}: engine has no optimization profile; expected one on '{INPUT_NAME}'")
        _mn, _opt, mx = eng.get_tensor_profile_shape(INPUT_NAME, 0)  # min, opt, max shapes of profile 0
        self.max_batch = int(tuple(mx)[0])

        self._stream = cu("cudaStreamCreate")
        self._context = ctx = eng.create_execution_context()
        if ctx is None:
            raise BackendError(f"{where}: create_execution_context failed (out of GPU memory?)")
        S = self.input_size
        if not ctx.set_input_shape(INPUT_NAME, (self.max_batch, 1, S, S)):
            raise BackendError(f"{where}: set_input_shape({INPUT_NAME}, {(self.max_batch, 1, S, S)}) refused")
        self._buffers[INPUT_NAME] = _HostDeviceBuffer(cu, INPUT_NAME, (self.max_batch, 1, S, S), np.float32)
        for n in self._out_names:
            out_shape = tuple(int(d) for d in ctx.get_tensor_shape(n))  # concrete at max batch
            if any(d < 0 for d in out_shape) or out_shape[0] != self.max_batch:
                raise ArtifactError(f"{where}: output {n!r} has shape {out_shape} at batch {self.max_batch}; expected a static (N, ...)")
            self._buffers[n] = _HostDeviceBuffer(cu, n, out_shape, np.float32)
        lg, sal = self._buffers["logits"].shape, self._buffers["saliency"].shape
        if lg[1:] != (N_CLASSES,) or len(sal) != 4 or sal[1] != 1:
            raise ArtifactError(f"{where}: outputs logits {lg[1:]} / saliency {sal[1:]}; expected (3,) and (1, h, w)")
        if EMBEDDING_NAME in self._buffers:
            emb = self._buffers[EMBEDDING_NAME].shape
            if len(emb) != 2:
                raise ArtifactError(f"{where}: output {EMBEDDING_NAME!r} has shape {emb}; expected (N, D)")
            self.embedding_dim = int(emb[1])
        for n, buf in self._buffers.items():
            if not ctx.set_tensor_address(n, buf.device):
                raise BackendError(f"{where}: set_tensor_address({n!r}) refused")
        self._shape_n = self.max_batch
        self.graph_batch = None
        if cuda_graph_batch is not None:
            self._capture(int(cuda_graph_batch))

    def _enqueue(self, ctx: Any, n: int) -> None:
        """H2D copy of n items, the engine, D2H copies: all async on our stream."""
        cu, rt, stream = self._cu, self._cu.rt, self._stream
        inp = self._buffers[INPUT_NAME]
        cu("cudaMemcpyAsync", inp.device, inp.host_ptr, n * inp.row_bytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
        if not ctx.execute_async_v3(int(stream)):
            raise BackendError(f"{self._where}: execute_async_v3 failed for a batch of {n} (see the TensorRT log)")
        for name in self._out_names:
            b = self._buffers[name]
            cu("cudaMemcpyAsync", b.host_ptr, b.device, n * b.row_bytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def _capture(self, n: int) -> None:
        """Capture copies + engine for batch n into a CUDA graph, on a context of its own so that
        other batch sizes (which change the main context's input shape) never touch it."""
        cu, rt, eng, where = self._cu, self._cu.rt, self._engine, self._where
        if not 1 <= n <= self.max_batch:
            raise BackendError(f"{where}: cuda_graph_batch={n}; expected 1..{self.max_batch} (the engine's max batch)")
        ctx = eng.create_execution_context()
        if ctx is None:
            raise BackendError(f"{where}: create_execution_context for the CUDA graph failed")
        self._graph_context = ctx
        S = self.input_size
        if not ctx.set_input_shape(INPUT_NAME, (n, 1, S, S)):
            raise BackendError(f"{where}: set_input_shape for the CUDA graph batch {n} refused")
        for name, buf in self._buffers.items():
            if not ctx.set_tensor_address(name, buf.device):
                raise BackendError(f"{where}: set_tensor_address({name!r}) refused for the CUDA graph context")
        # One plain run first: TensorRT finishes shape-dependent setup on the first enqueue,
        # which must not happen inside a capture.
        self._buffers[INPUT_NAME].host[:n] = 0.0
        self._enqueue(ctx, n)
        cu("cudaStreamSynchronize", self._stream)
        cu("cudaStreamBeginCapture", self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            self._enqueue(ctx, n)
        finally:
            graph = cu("cudaStreamEndCapture", self._stream)  # always end, even when the enqueue failed
        try:
            self._graph_exec = cu("cudaGraphInstantiateWithFlags", graph, 0)
        finally:
            cu("cudaGraphDestroy", graph)  # the executable graph keeps its own copy
        self.graph_batch = n
        log.info("tensorrt: %s: CUDA graph captured for batch %d", where, n)

    # -- run --------------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (n, 1, S, S), n <= max_batch -> {'logits': (n, 3), 'saliency': (n, 1, h, w)} (copies)."""
        if self._engine is None:
            raise BackendError(f"{self._where}: infer() called after close()")
        n = batch.shape[0]
        if n > self.max_batch:
            raise BackendError(f"tensorrt: batch of {n} exceeds the engine's max batch {self.max_batch} (rebuild with --max-batch)")
        cu = self._cu
        if self._device_index:
            cu("cudaSetDevice", self._device_index)  # the current device is per host thread
        np.copyto(self._buffers[INPUT_NAME].host[:n], batch)
        if self._graph_exec is not None and n == self.graph_batch:
            cu("cudaGraphLaunch", self._graph_exec, self._stream)
        else:
            if n != self._shape_n:
                if not self._context.set_input_shape(INPUT_NAME, (n, 1, self.input_size, self.input_size)):
                    raise BackendError(f"{self._where}: set_input_shape for a batch of {n} refused")
                self._shape_n = n
            self._enqueue(self._context, n)
        cu("cudaStreamSynchronize", self._stream)
        return {name: self._buffers[name].host[:n].copy() for name in self._out_names}

    def close(self) -> None:
        """Free the graph, buffers, stream, contexts and engine. Idempotent; errors are logged."""
        cu = self._cu
        try:
            if self._graph_exec is not None:
                cu("cudaGraphExecDestroy", self._graph_exec)
            for buf in self._buffers.values():
                buf.free(cu)
            if self._stream is not None:
                cu("cudaStreamDestroy", self._stream)
        except BackendError as exc:
            log.warning("tensorrt: %s: while releasing CUDA resources: %s", self._where, exc)
        finally:
            self._graph_exec = None
            self._buffers = {}
            self._stream = None
            # contexts before the engine, the engine before the runtime (TensorRT's ownership order)
            self._graph_context = None
            self._context = None
            self._engine = None
            self._runtime = None


# ----------------------------------------------------------------------------- the backend


class TensorRTOptions(BackendOptions):
    """TensorRTBackend's keyword arguments. From [model]: device (None = 'cuda'), cuda_graph ->
    cuda_graph_batch = 1, precision (the engine's own: only an explicit fp16 is checked, against
    the engine, by check_backend); threads is not taken."""

    MODEL_KEYS: ClassVar[tuple[str, ...]] = ("device", "precision", "cuda_graph")

    device: Annotated[str, msgspec.Meta(pattern=r"^cuda(:\d+)?$")] = "cuda"  # 'cuda' | 'cuda:i'
    cuda_graph_batch: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None  # <= the engine's max batch
    verify: bool = True  # False only for an engine without a manifest (logged as a warning)

    @classmethod
    def from_model(cls, model: Any) -> TensorRTOptions:
        return cls(device=model.device or "cuda", cuda_graph_batch=1 if model.cuda_graph else None)


@register_backend("tensorrt", TensorRTOptions)
class TensorRTBackend(Backend):
    """A TensorRT engine from `streamcad convert`, verified before it is deserialized.

    Options: device ('cuda' | 'cuda:i'), cuda_graph_batch (capture a CUDA graph for this batch
    size; other sizes run without it), verify (default True: manifest sha256 + cache key;
    False only for engines without a manifest, which is logged as a warning).
    precision is the engine's, from its manifest / file name ('fp16' | 'fp32').
    """

    suffixes = (".engine", ".plan")
    artifact_kind = "a TensorRT engine"
    artifact_precision = True  # built fp16 or fp32 by `streamcad convert`; model.precision = 'fp32' means "the engine's"

    def __init__(
        self,
        artifact: str | Path,
        device: str = "cuda",
        cuda_graph_batch: int | None = None,
        verify: bool = True,
    ) -> None:
        from streamcad.manifest import read_manifest, verify_artifact

        path = Path(artifact)
        index = device_index(device)
        if verify:
            manifest = read_manifest(path)
            if manifest.format != "tensorrt":
                raise ArtifactError(f"{path.name}: manifest format {manifest.format!r}; expected 'tensorrt'")
            verify_artifact(path, manifest)  # size + sha256 before the bytes reach TensorRT
            built = manifest_key(manifest)
            check_engine_key(path, manifest, current_key(built.precision, index))
            gate = manifest.gate or {}
            if gate and not gate.get("passed", False):
                log.warning("tensorrt: %s FAILED its accuracy gate and was written with --force: %s", path.name, gate.get("failures"))
            self.precision = built.precision
        else:
            key = parse_engine_filename(path)
            log.warning("tensorrt: loading %s WITHOUT manifest verification (verify=False)", path.name)
            cur = current_key(key["precision"], index)
            if key["compute_capability"] != cur.compute_capability or key["trt"] != cur.trt_major_minor:
                raise ArtifactError(
                    f"{path.name}: engine cache key mismatch: built for sm {key['compute_capability']} / TensorRT {key['trt']}, "
                    f"this machine is sm {cur.compute_capability} / TensorRT {cur.tensorrt_version}"
                )
            self.precision = key["precision"]
        self._runner = TrtEngineRunner(path.read_bytes(), index, cuda_graph_batch, where=path.name)
        self.input_size = self._runner.input_size
        self.max_batch = self._runner.max_batch
        self.device = f"cuda:{index}"
        log.info("tensorrt: %s S=%d %s max batch %d on %s", path.name, self.input_size, self.precision, self.max_batch, self.device)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._runner is None:
            raise BackendError("tensorrt: infer() called after close()")
        return self._runner.infer(self.check_batch(batch))

    def close(self) -> None:
        if getattr(self, "_runner", None) is not None:
            self._runner.close()
            self._runner = None
