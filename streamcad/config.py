"""Typed run configuration, loaded from TOML. Every CLI flag of `streamcad run` has a key here.

    streamcad.toml --tomllib--> dict --msgspec.convert (strict)--> RunConfig (frozen)

The sinks' sections ([publish], [preview], [igtl], [record]) are those sinks' own options
Structs, declared in their modules (streamcad.sinks.zmq, .preview, .igtl, .record) and named here;
[model]'s backend keys are mapped onto the backend's own options by streamcad.backends
(options_from_model). Unknown keys, wrong types and out-of-range values raise ConfigError naming the key (e.g.
`smoothing.tau_s: Expected float >= 0.01, got -1`). Defaults carry their reason as a comment.
Example (all keys optional):

    version = 1
    [source]
    uri = "file:scan.mp4"
    loop = true
    [model]
    path = "engines/models/default.onnx"
    [publish]
    endpoint = "tcp://127.0.0.1:5555"
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from streamcad.errors import ConfigError

# the sinks' sections are their own options (each sink module declares its Struct; light imports)
from streamcad.sinks.igtl import IgtlConfig
from streamcad.sinks.preview import PreviewConfig
from streamcad.sinks.record import RecordConfig
from streamcad.sinks.zmq import PublishConfig

__all__ = [
    "CONFIG_VERSION",
    "SourceConfig",
    "RoiConfig",
    "ModelConfig",
    "SmoothingConfig",
    "QualitySection",
    "PublishConfig",
    "PreviewConfig",
    "IgtlConfig",
    "RecordConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
]

CONFIG_VERSION = 1

PosFloat = Annotated[float, msgspec.Meta(gt=0)]
# Upper bounds: a value past them is a typo or `inf`, never a setting (each one said why below).
Fps = Annotated[float, msgspec.Meta(gt=0, le=1000.0)]  # no capture or sweep runs faster; inf/1e308 mean nothing
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600.0)]  # an hour: any longer wait is a stuck source
MAX_THREADS = 256  # ORT intra-op threads; also capped by the CPUs this process may use (ModelConfig)
Prob = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class SourceConfig(_Section):
    uri: str = "sweep:"  # the repo's BUS-BRA sample images: runs on a fresh machine
    loop: bool = False
    pace: Literal["native", "none"] = "native"  # 'none' = every frame, as fast as the pipeline scores them
    fps: Fps | None = None  # sweep frame rate / requested device fps; None = source default
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0  # sweep: deterministic content per seed (numpy seed range)
    width: Annotated[int, msgspec.Meta(gt=0, le=16384)] | None = None  # device: requested capture size
    height: Annotated[int, msgspec.Meta(gt=0, le=16384)] | None = None
    fourcc: Annotated[str, msgspec.Meta(min_length=4, max_length=4)] | None = None
    reconnect_initial_s: Seconds = 0.1  # first back-off after a dropped source
    reconnect_max_s: Seconds = 2.0  # back-off cap: a replugged cable is picked up within ~2 s
    reconnect_max_attempts: Annotated[int, msgspec.Meta(ge=0)] | None = None  # None = forever


class RoiConfig(_Section):
    box: Annotated[list[int], msgspec.Meta(min_length=4, max_length=4)] | None = None  # x,y,w,h override
    warmup_frames: Annotated[int, msgspec.Meta(ge=1)] = 8  # frames of temporal evidence to refine the box


class ModelConfig(_Section):
    # None = the shipped engines/models/default.onnx; "" is refused (it would silently mean the default)
    path: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    backend: str = "onnxruntime"
    allow_unverified: bool = False  # a bare ONNX file without manifest needs this, explicitly
    # ORT intra-op threads. 1: on a 2-core box the decode, prepare and publish threads need the
    # other core; 2 ORT threads measured 50 fps vs 128 fps with 1 (benchmarks/README.md)
    threads: Annotated[int, msgspec.Meta(ge=1, le=MAX_THREADS)] = 1
    device: str | None = None  # 'cpu' or 'cuda[:i]' (onnxruntime: its execution provider), never guessed
    precision: Literal["fp32", "fp16"] = "fp32"
    cuda_graph: bool = False  # torch / tensorrt: replay a captured graph (fixed batch 1)

    def __post_init__(self) -> None:
        cpus = _usable_cpus()
        if self.threads > cpus:
            # more ORT threads than CPUs only starves the other stages (1000 gave no frame for 25 s)
            raise ValueError(f"threads = {self.threads} exceeds the {cpus} CPUs this process may use; expected 1..{cpus}")


class SmoothingConfig(_Section):
    # EMA of p(malignant) over lesion frames with a time constant, so behaviour does not depend on fps.
    tau_s: Annotated[float, msgspec.Meta(ge=0.01, le=60.0)] = 0.5  # ~15 frames at 30 fps: steady, still responsive
    lesion_threshold: Prob = 0.5  # p(benign) + p(malignant) above this = the frame shows a lesion
    leave_after_s: Annotated[float, msgspec.Meta(ge=0.0, le=60.0)] = 0.5  # no lesion this long = probe left it: reset
    # 'suspicious' is entered when the smoothed p(malignant) reaches the model's validated
    # operating threshold (its manifest's operating_threshold) and left when it falls below
    # threshold x (1 - band) (hysteresis: fewer flips while the score hovers there). See
    # streamcad.smoothing. A fraction, not a fixed width, so that models whose thresholds differ
    # (0.28, 0.10) get the same relative hysteresis: a fixed 0.05, half of a 0.10 threshold, kept
    # benign views 'suspicious' (specificity 20% vs 48% without a band on the sample's frames:
    # benchmarks/results/operating-point-sample-fixed-band-0.05.json)
    band: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.2
    on_threshold: Prob | None = None  # override of the manifest's threshold (logged, shown in status)
    off_threshold: Prob | None = None  # override of on_threshold x (1 - band)

    def __post_init__(self) -> None:
        if self.on_threshold is not None and self.off_threshold is not None and self.off_threshold > self.on_threshold:
            raise ValueError(
                f"off_threshold ({self.off_threshold}) must not exceed on_threshold ({self.on_threshold})"
            )


class QualitySection(_Section):
    enabled: bool = True
    # Threshold overrides passed to streamcad.quality.QualityConfig (names checked there).
    thresholds: dict[str, float] = {}

    def __post_init__(self) -> None:
        bad = sorted(k for k, v in self.thresholds.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"thresholds.{bad[0]} = {self.thresholds[bad[0]]}; expected a finite number")


class RunConfig(_Section):
    version: int = CONFIG_VERSION
    source: SourceConfig = SourceConfig()
    roi: RoiConfig = RoiConfig()
    model: ModelConfig = ModelConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    quality: QualitySection = QualitySection()
    publish: PublishConfig = PublishConfig()
    preview: PreviewConfig = PreviewConfig()
    igtl: IgtlConfig = IgtlConfig()
    record: RecordConfig = RecordConfig()
    frames: Annotated[int, msgspec.Meta(ge=1)] | None = None  # stop after N published frames
    dashboard: bool = True


def _path_of(msg: str) -> tuple[str, str]:
    """'Expected `int`, got `str` - at `$.a.x`' -> ('a.x', 'Expected `int`, got `str`')."""
    text, sep, where = msg.rpartition(" - at `")
    if not sep:
        return "", msg
    return where.rstrip("`").removeprefix("$").lstrip("."), text


def config_from_dict(data: dict) -> RunConfig:
    """Validate a plain dict (parsed TOML, or CLI overrides merged in) into a RunConfig."""
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"version: unsupported config version {version!r}; expected {CONFIG_VERSION}")
    try:
        return msgspec.convert(data, RunConfig)
    except RecursionError:
        raise ConfigError("(top level): nested too deeply to be a streamcad config") from None
    except msgspec.ValidationError as exc:
        where, what = _path_of(str(exc))
        if what.startswith("Object contains unknown field"):
            key = what.split("`")[1]
            where = f"{where}.{key}" if where else key
            section = _section_for(where)
            valid = ", ".join(section.__struct_fields__) if section else ""
            raise ConfigError(f"{where}: unknown key; valid keys here: {valid}") from None
        raise ConfigError(f"{where or '(top level)'}: {what}") from None


def _section_for(dotted: str):
    cls = RunConfig
    for part in dotted.split(".")[:-1]:
        ann = {f.name: f for f in msgspec.structs.fields(cls)}.get(part)
        if ann is None:
            return None
        cls = ann.type
    return cls


def load_config(path: str | Path | None, overrides: dict | None = None) -> RunConfig:
    """Read a TOML file (optional), deep-merge `overrides` (from CLI flags), validate."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        except RecursionError:  # tomllib recurses per nesting level; a config is 2 levels deep
            raise ConfigError(f"{p}: nested too deeply to be a streamcad config; expected [section] tables of plain values") from None
    if overrides:
        data = _merge(data, overrides)
    return config_from_dict(data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
