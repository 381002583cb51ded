"""Typed run configuration, loaded from TOML. Every CLI flag of `streamcad run` has a key here.

    streamcad.toml --tomllib--> dict --msgspec.convert (strict)--> RunConfig (frozen)

Unknown keys, wrong types and out-of-range values raise ConfigError naming the key (e.g.
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

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from streamcad.errors import ConfigError

__all__ = [
    "CONFIG_VERSION",
    "SourceConfig",
    "RoiConfig",
    "ModelConfig",
    "SmoothingConfig",
    "QualitySection",
    "PublishConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
]

CONFIG_VERSION = 1

PosFloat = Annotated[float, msgspec.Meta(gt=0)]
Prob = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class SourceConfig(_Section):
    uri: str = "sweep:"  # the repo's BUS-BRA sample images: runs on a fresh machine
    loop: bool = False
    pace: Literal["native", "none"] = "native"  # 'none' = every frame, as fast as the pipeline scores them
    fps: PosFloat | None = None  # sweep frame rate / requested device fps; None = source default
    seed: int = 0  # sweep: deterministic content per seed
    width: Annotated[int, msgspec.Meta(gt=0)] | None = None  # device: requested capture size
    height: Annotated[int, msgspec.Meta(gt=0)] | None = None
    fourcc: Annotated[str, msgspec.Meta(min_length=4, max_length=4)] | None = None
    reconnect_initial_s: PosFloat = 0.1  # first back-off after a dropped source
    reconnect_max_s: PosFloat = 2.0  # back-off cap: a replugged cable is picked up within ~2 s
    reconnect_max_attempts: Annotated[int, msgspec.Meta(ge=0)] | None = None  # None = forever


class RoiConfig(_Section):
    box: Annotated[list[int], msgspec.Meta(min_length=4, max_length=4)] | None = None  # x,y,w,h override
    warmup_frames: Annotated[int, msgspec.Meta(ge=1)] = 8  # frames of temporal evidence to refine the box


class ModelConfig(_Section):
    path: str | None = None  # None = the shipped engines/models/default.onnx
    backend: str = "onnxruntime"
    allow_unverified: bool = False  # a bare ONNX file without manifest needs this, explicitly
    # ORT intra-op threads. 1: on a 2-core box the decode, prepare and publish threads need the
    # other core; 2 ORT threads measured 50 fps vs 128 fps with 1 (benchmarks/README.md)
    threads: Annotated[int, msgspec.Meta(ge=1)] = 1
    device: str | None = None  # torch backend: 'cpu' or 'cuda[:i]', never guessed
    precision: Literal["fp32", "fp16"] = "fp32"
    cuda_graph: bool = False  # torch / tensorrt: replay a captured graph (fixed batch 1)


class SmoothingConfig(_Section):
    # EMA of p(malignant | lesion) with a time constant, so behaviour does not depend on fps.
    tau_s: Annotated[float, msgspec.Meta(ge=0.01)] = 0.5  # ~15 frames at 30 fps: steady, still responsive
    lesion_threshold: Prob = 0.5  # p(benign) + p(malignant) above this = the frame shows a lesion
    leave_after_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.5  # no lesion this long = probe left it: reset
    on_threshold: Prob = 0.6  # hysteresis: enter 'suspicious' at or above ...
    off_threshold: Prob = 0.4  # ... leave it below this (no flicker around one threshold)

    def __post_init__(self) -> None:
        if self.off_threshold > self.on_threshold:
            raise ValueError(
                f"off_threshold ({self.off_threshold}) must not exceed on_threshold ({self.on_threshold})"
            )


class QualitySection(_Section):
    enabled: bool = True
    # Threshold overrides passed to streamcad.quality.QualityConfig (names checked there).
    thresholds: dict[str, float] = {}


class PublishConfig(_Section):
    endpoint: str = "tcp://127.0.0.1:5555"  # loopback by default: binding wider must be explicit
    allow_remote: bool = False
    stream: str = "probe0"
    encoding: Literal["json", "msgpack"] = "json"
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=1.0)] = 1.0  # the contract: >= 1 status per second
    hwm_seconds: PosFloat = 4.0  # a slow UI may lag this much before frames are dropped (and counted)
    connect: bool = False  # connect to a proxy's XSUB instead of binding
    curve_secret_key: str | None = None  # server .key_secret file: enables CURVE encryption
    curve_allowed_dir: str | None = None  # directory of allowed client .key files


class RunConfig(_Section):
    version: int = CONFIG_VERSION
    source: SourceConfig = SourceConfig()
    roi: RoiConfig = RoiConfig()
    model: ModelConfig = ModelConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    quality: QualitySection = QualitySection()
    publish: PublishConfig = PublishConfig()
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
