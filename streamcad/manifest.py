"""Artifact manifests: the JSON beside every model file, and the checks the runtime makes.

    engines/models/NAME.onnx  +  engines/models/NAME.json  (this module's Manifest)
        --read_manifest--> Manifest --verify_artifact(size, sha256, format)--> ok
        --load_backend--> Backend --input contract vs manifest--> LoadedModel(backend, manifest, spec, ...)
        manifest `ood` (the out-of-domain gate, train/ood.py) --OodGate.from_dict--> LoadedModel.gate,
        refused unless the backend has an 'embedding' output of the gate's D; no `ood` -> gate None

The runtime refuses a file it cannot vouch for, and says which check failed: no manifest
(unknown file), size mismatch (truncated), sha256 mismatch (tampered), unsupported manifest
schema or format version, a contract_sha256 mismatch (a field that changes scores was edited),
non-finite or mistyped numbers, or an input contract that differs from the manifest. A bare
model is loaded only with allow_unverified=True (CLI: --allow-unverified), with a warning.

Integrity covers every field that changes scores, not just the model bytes:

    contract_sha256 = sha256("streamcad-manifest-contract/2\n" + canonical JSON of every field
                             except DESCRIPTIVE_FIELDS)        # includes sha256 = the model bytes

so preprocess (size, mean, std, resize), class_names, operating_threshold, temperature, input,
outputs, format, precision, the ood gate, ... and any field added later are covered unless
listed as descriptive (provenance: created, versions, metrics, notes, ...). write_manifest()
computes it; a version-1 manifest (before it) is refused with the command that upgrades it
(``python -m streamcad.engines.upgrade_manifest PATH``). A hash, not a signature: it catches edits and
corruption, not someone who recomputes it on purpose (file permissions guard against that).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import math
import numbers
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcad.backends import Backend, load_backend
from streamcad.errors import ArtifactError
from streamcad.preprocess import PreprocessSpec
from streamcad.zoom import ZoomSpec

__all__ = [
    "SCHEMA_VERSION",
    "CLASS_NAMES",
    "FORMATS",
    "Manifest",
    "LoadedModel",
    "manifest_path",
    "sha256_file",
    "library_versions",
    "git_commit",
    "write_manifest",
    "read_manifest",
    "verify_artifact",
    "load_model",
    "DESCRIPTIVE_FIELDS",
    "contract_digest",
    "upgrade_manifest",
]

log = logging.getLogger(__name__)

# what write_manifest computes itself (Manifest.to_fields leaves them out)
COMPUTED_FIELDS = frozenset({"file", "sha256", "size_bytes", "schema_version", "contract_sha256"})
SCHEMA_VERSION = 2  # bump when a field changes meaning; readers refuse versions they do not know
# 2: contract_sha256 over every field that changes scores (1 covered the model bytes only)
# Fields that describe an artifact without changing one score: left out of contract_sha256, so
# metrics or notes may be added later. Every other field, present or future, is covered.
DESCRIPTIVE_FIELDS = frozenset(
    {"contract_sha256", "created", "versions", "git_commit", "model", "training_data", "metrics", "source", "gate", "notes"}
)
_CONTRACT_TAG = b"streamcad-manifest-contract/2\n"
_MAX_MANIFEST_BYTES = 4 << 20  # a manifest is a few KB; refuse a huge file before parsing it
_UPGRADE_HINT = "python -m streamcad.engines.upgrade_manifest"
CLASS_NAMES = ("normal", "benign", "malignant")
FORMATS = {".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt", ".pt": "torch", ".pth": "torch"}
# newest ONNX opset each onnxruntime release runs (onnxruntime's own compatibility table)
_ORT_MAX_OPSET = [((1, 17), 20), ((1, 18), 21), ((1, 20), 22), ((1, 22), 23)]


SALIENCY_KINDS = ("attention", "lesion_probability")


@dataclass
class Manifest:
    """One artifact's record. JSON keys are exactly these field names."""

    file: str  # artifact file name (no directory): the manifest sits beside it
    sha256: str  # hex digest of the whole file
    size_bytes: int
    format: str  # 'onnx' | 'tensorrt' | 'torch'
    input: dict  # {'name': 'input', 'shape': ['N', 1, S, S], 'dtype': 'float32'}
    outputs: list = field(default_factory=lambda: ["logits", "saliency"])
    saliency_kind: str = "attention"  # 'attention' (max-normalised map) | 'lesion_probability' (p(lesion) per cell: a lesion box is published)
    class_names: list = field(default_factory=lambda: list(CLASS_NAMES))
    preprocess: dict = field(default_factory=dict)  # PreprocessSpec.to_dict()
    format_version: int | str | None = None  # ONNX opset | TensorRT version | torch version
    operating_threshold: float | None = None  # on p(malignant) (3-way softmax), chosen on validation data
    temperature: float | None = None  # calibration temperature already baked into the logits
    model: dict = field(default_factory=dict)  # e.g. {'name': 'small', 'config': {...}, 'params': int}
    training_data: dict = field(default_factory=dict)  # datasets, split file + its sha256, folds
    metrics: dict = field(default_factory=dict)  # {name: {'value', 'ci_low', 'ci_high', ...}}
    source: dict = field(default_factory=dict)  # what it was built from: {'file', 'sha256'}
    versions: dict = field(default_factory=dict)  # library versions at build time
    git_commit: str | None = None
    created: str = ""  # ISO 8601 UTC
    # engines (format 'tensorrt') only:
    precision: str = "fp32"  # 'fp32' | 'fp16'
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None  # e.g. '9.0'
    gate: dict = field(default_factory=dict)  # accuracy gate result vs the ONNX reference
    notes: dict = field(default_factory=dict)  # free-form extras
    ood: dict = field(default_factory=dict)  # out-of-domain gate (streamcad.gate_ood.OodGate.to_dict); {} = none
    zoom: dict = field(default_factory=dict)  # second, zoomed look (streamcad.zoom.ZoomSpec.to_dict); {} = one view
    schema_version: int = SCHEMA_VERSION
    contract_sha256: str = ""  # contract_digest(): every field but DESCRIPTIVE_FIELDS, model sha256 included

    @property
    def input_size(self) -> int:
        return int(self.input["shape"][-1])

    def spec(self) -> PreprocessSpec:
        try:
            return PreprocessSpec.from_dict(self.preprocess)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest for {self.file}: bad preprocess {self.preprocess}: {exc}") from exc

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_fields(self) -> dict:
        """The fields write_manifest takes back, the ones it computes left out: a read-modify-write
        is ``write_manifest(path, **{**m.to_fields(), "ood": ...})``."""
        return {k: v for k, v in self.to_dict().items() if k not in COMPUTED_FIELDS}

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> Manifest:
        if not isinstance(d, dict):
            raise ArtifactError(f"{where}: expected a JSON object; got {type(d).__name__}")
        version = d.get("schema_version")
        if version == 1:
            raise ArtifactError(
                f"{where}: schema version 1 predates the integrity hash over preprocess, class names and threshold "
                f"(contract_sha256); check its fields and upgrade it with `{_UPGRADE_HINT} {d.get('file') or 'MODEL'}` "
                "(beside the model), or re-export the model"
            )
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{where}: unsupported manifest schema version {version!r}; this streamcad reads version {SCHEMA_VERSION}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ArtifactError(f"{where}: unknown manifest keys {unknown}; expected some of {sorted(names)}")
        try:
            m = cls(**d)
        except TypeError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        m._validate(where)
        if not (isinstance(m.contract_sha256, str) and len(m.contract_sha256) == 64):
            raise ArtifactError(f"{where}: contract_sha256={m.contract_sha256!r}; expected 64 hex digits")
        return m

    def check_contract(self, where: str) -> None:
        """contract_sha256 must match the fields as they are now (see the module docstring)."""
        if contract_digest(self.to_dict()) != self.contract_sha256:
            raise ArtifactError(
                f"{where}: contract_sha256 mismatch: a field that changes scores (preprocess, class_names, "
                "operating_threshold, temperature, input, ...) was edited after export; re-export the model, or if the "
                f"edit is intended re-seal it with `{_UPGRADE_HINT} --reseal {self.file}`"
            )

    def _validate(self, where: str) -> None:
        def bad(what: str, expected: str) -> ArtifactError:
            return ArtifactError(f"{where}: {what}; expected {expected}")

        if not isinstance(self.file, str) or not self.file or os.sep in self.file:
            raise bad(f"file={self.file!r}", "a bare file name")
        if not (isinstance(self.sha256, str) and len(self.sha256) == 64):
            raise bad(f"sha256={self.sha256!r}", "64 hex digits")
        if not isinstance(self.size_bytes, int) or self.size_bytes < 0:
            raise bad(f"size_bytes={self.size_bytes!r}", "an int >= 0")
        if self.format not in set(FORMATS.values()):
            raise bad(f"format={self.format!r}", f"one of {sorted(set(FORMATS.values()))}")
        shape = self.input.get("shape") if isinstance(self.input, dict) else None
        if not (isinstance(shape, list) and len(shape) == 4 and shape[1] == 1 and isinstance(shape[3], int) and shape[2] == shape[3]):
            raise bad(f"input={self.input!r}", "{'name': ..., 'shape': ['N', 1, S, S], 'dtype': 'float32'}")
        if list(self.class_names) != list(CLASS_NAMES):
            raise bad(f"class_names={self.class_names!r}", f"{list(CLASS_NAMES)}")
        if self.precision not in ("fp32", "fp16"):
            raise bad(f"precision={self.precision!r}", "'fp32' or 'fp16'")
        if self.operating_threshold is not None and not (_finite(self.operating_threshold) and 0.0 <= self.operating_threshold <= 1.0):
            raise bad(f"operating_threshold={self.operating_threshold!r}", "a probability in [0, 1] or null")
        if self.temperature is not None and not (_finite(self.temperature) and self.temperature > 0):
            raise bad(f"temperature={self.temperature!r}", "a finite number > 0 or null")
        pre = self.preprocess
        if not isinstance(pre, dict):
            raise bad(f"preprocess={pre!r}", "an object {size, mean, std, resize}")
        for key in ("mean", "std"):
            if key in pre and not _finite(pre[key]):
                raise bad(f"preprocess.{key}={pre[key]!r}", "a finite number")
        if "std" in pre and not pre["std"] > 0:
            raise bad(f"preprocess.std={pre['std']!r}", "a number > 0")
        if "size" in pre and not (isinstance(pre["size"], int) and not isinstance(pre["size"], bool)):
            raise bad(f"preprocess.size={pre['size']!r}", "an int")
        if "resize" in pre and not isinstance(pre["resize"], str):
            raise bad(f"preprocess.resize={pre['resize']!r}", "a string ('letterbox')")
        if self.saliency_kind not in SALIENCY_KINDS:
            raise bad(f"saliency_kind={self.saliency_kind!r}", f"one of {list(SALIENCY_KINDS)}")
        if self.zoom:
            ZoomSpec.from_dict(self.zoom, where)
            if self.saliency_kind != "lesion_probability":
                raise bad(f"zoom with saliency_kind={self.saliency_kind!r}", "'lesion_probability' (the zoom box comes from the lesion map)")


def _finite(x: Any) -> bool:
    """A real, finite number (not a bool, not a string)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _field_defaults() -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(Manifest):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def contract_digest(d: dict) -> str:
    """sha256 over the canonical JSON of every manifest field but DESCRIPTIVE_FIELDS (the model's
    own sha256 included): what contract_sha256 must equal. A field at its default value is left
    out (still determined: absent = default), so a field added to Manifest later, with a default,
    does not break manifests sealed before it."""
    defaults = _field_defaults()
    payload = {k: v for k, v in d.items() if k not in DESCRIPTIVE_FIELDS and not (k in defaults and v == defaults[k])}
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"manifest fields cannot be hashed: {exc}; expected JSON values with finite numbers") from exc
    return hashlib.sha256(_CONTRACT_TAG + text.encode("ascii")).hexdigest()


@dataclass
class LoadedModel:
    """A verified backend plus what the runtime needs to feed it and label its outputs."""

    backend: Backend
    manifest: Manifest | None  # None only when loaded with allow_unverified=True
    spec: PreprocessSpec
    class_names: tuple[str, ...]
    sha256: str
    gate: Any = None  # streamcad.gate_ood.OodGate from the manifest's `ood`; None = the model has no gate

    @property
    def model_id(self) -> str:
        return self.manifest.file if self.manifest else "unverified"

    @property
    def threshold(self) -> float | None:
        return self.manifest.operating_threshold if self.manifest else None

    @property
    def zoom(self) -> ZoomSpec | None:
        """streamcad.zoom.ZoomSpec when the manifest asks for the second, zoomed look; else None."""
        if self.manifest is None or not self.manifest.zoom:
            return None
        return ZoomSpec.from_dict(self.manifest.zoom)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def manifest_path(artifact: str | Path) -> Path:
    """NAME.onnx -> NAME.json beside it (a .json path is returned unchanged)."""
    p = Path(artifact)
    return p if p.suffix == ".json" else p.with_suffix(".json")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions from package metadata (nothing is imported)."""
    out = {"python": platform.python_version()}
    for dist in ("streamcad", "numpy", "opencv-python-headless", "onnxruntime", "onnx", "torch", "tensorrt", *extra):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit(where: Path, dirty: bool = False) -> str | None:
    """HEAD of the git checkout at `where`, or None (not a checkout, no git). The one git-commit
    helper (manifests, recordings, training records, benchmarks): dirty=True appends '-dirty'
    when tracked files differ from HEAD (a training run's code may not be HEAD's)."""

    def git(*args: str) -> str | None:
        r = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        sha = git("rev-parse", "HEAD") or None
        if sha is None or not dirty:
            return sha
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("no git commit: %s", exc)
        return None
    return None if changed is None else sha + ("-dirty" if changed else "")


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ArtifactError(f"{path.name}: unknown artifact type {path.suffix!r}; expected one of {sorted(FORMATS)}")
    return fmt


def _onnx_io(path: Path) -> tuple[dict, int | None]:
    """Input spec, opset and output names of an ONNX file, read through onnxruntime (and onnx for the opset if present)."""
    import onnxruntime as ort

    from streamcad.backends.onnxruntime import check_contract

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"onnxruntime cannot load {path.name}: {exc}") from exc
    name, size, fixed = check_contract(sess.get_inputs(), sess.get_outputs(), path.name)
    outputs = [o.name for o in sess.get_outputs()]
    opset = None
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    except ImportError:
        log.debug("onnx not installed: the opset of %s is not recorded unless given", path.name)
    return {"name": name, "shape": [fixed or "N", 1, size, size], "dtype": "float32"}, opset, outputs


def write_manifest(artifact: str | Path, **fields: Any) -> Manifest:
    """Write NAME.json beside `artifact` and return it.

    file, sha256, size_bytes, format, created, versions and git_commit are filled in here; for
    an ONNX file the input spec and opset (format_version) are read from the model when not
    given. Every other field is a keyword named like the Manifest field (unknown names are an
    ArtifactError). `preprocess` may be a PreprocessSpec or its dict; it defaults to
    PreprocessSpec(size=S).
    """
    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"cannot write a manifest: {path} does not exist")
    names = {f.name for f in dataclasses.fields(Manifest)}
    fields.pop("contract_sha256", None)  # always recomputed here (a read-modify-write passes the old one)
    unknown = sorted(set(fields) - (names - COMPUTED_FIELDS))
    if unknown:
        raise ArtifactError(f"write_manifest: unknown or computed fields {unknown}; expected some of {sorted(names - COMPUTED_FIELDS)}")
    fmt = fields.pop("format", None) or _format_of(path)
    if fmt == "onnx" and ("input" not in fields or fields.get("format_version") is None or "outputs" not in fields):
        inp, opset, outputs = _onnx_io(path)
        fields.setdefault("input", inp)
        fields.setdefault("outputs", outputs)
        if fields.get("format_version") is None:
            fields["format_version"] = opset
    if "input" not in fields:
        raise ArtifactError(f"write_manifest({path.name}): give input={{'name', 'shape': ['N', 1, S, S], 'dtype'}}")
    spec = fields.get("preprocess")
    if isinstance(spec, PreprocessSpec):
        fields["preprocess"] = spec.to_dict()
    elif spec is None:
        fields["preprocess"] = PreprocessSpec(size=int(fields["input"]["shape"][-1])).to_dict()
    fields.setdefault("versions", library_versions())
    fields.setdefault("git_commit", git_commit(Path(__file__).resolve().parent))
    fields.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    m = Manifest(file=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size, format=fmt, **fields)
    m._validate(f"write_manifest({path.name})")
    if m.preprocess.get("size") != m.input_size:
        raise ArtifactError(f"write_manifest({path.name}): preprocess size {m.preprocess.get('size')} != model input S {m.input_size}")
    m.spec()  # the preprocess block must be one the runtime accepts
    return _seal_and_write(m, manifest_path(path))


def _seal_and_write(m: Manifest, out: Path) -> Manifest:
    m.contract_sha256 = contract_digest(m.to_dict())
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(m.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, out)  # atomic: a reader never sees half a manifest
    log.info("wrote %s (sha256 %s…, contract %s…)", out, m.sha256[:12], m.contract_sha256[:12])
    return m


def _read_json(mp: Path) -> Any:
    """Parse a manifest file: bounded in size and nesting, finite numbers only."""
    def refuse_constant(name: str) -> Any:
        raise ValueError(f"non-finite number {name}")

    try:
        size = mp.stat().st_size
        if size > _MAX_MANIFEST_BYTES:
            raise ArtifactError(f"manifest {mp.name} is {size} bytes; expected a few KB (at most {_MAX_MANIFEST_BYTES})")
        return json.loads(mp.read_text(encoding="utf-8"), parse_constant=refuse_constant)
    except RecursionError:
        raise ArtifactError(f"manifest {mp.name} is nested too deeply to be a manifest; expected a flat JSON object") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ArtifactError(f"manifest {mp.name} is not readable JSON: {exc}; expected finite numbers only") from exc


def upgrade_manifest(path: str | Path, reseal: bool = False) -> Manifest:
    """Bring a version-1 manifest to this schema (or, reseal=True, re-seal a current one whose
    fields were edited on purpose): check the model file against its sha256 and size, validate
    every field, compute contract_sha256, write it atomically. Whoever runs this vouches for the
    fields as they stand: check preprocess, class_names, operating_threshold first."""
    mp = manifest_path(path)
    if not mp.is_file():
        raise ArtifactError(f"no manifest {mp}")
    d = _read_json(mp)
    where = f"manifest {mp.name}"
    if not isinstance(d, dict):
        raise ArtifactError(f"{where}: expected a JSON object; got {type(d).__name__}")
    version = d.get("schema_version")
    if version == SCHEMA_VERSION and not reseal:
        raise ArtifactError(f"{where} is already schema version {SCHEMA_VERSION}; pass --reseal to re-seal edited fields")
    if version not in (1, SCHEMA_VERSION):
        raise ArtifactError(f"{where}: schema version {version!r}; this upgrades version 1 (or re-seals {SCHEMA_VERSION})")
    d = {**d, "schema_version": SCHEMA_VERSION, "contract_sha256": "0" * 64}
    m = Manifest.from_dict(d, where=where)
    model = mp.with_name(m.file)
    size = model.stat().st_size if model.is_file() else None
    if size != m.size_bytes or sha256_file(model) != m.sha256:
        raise ArtifactError(f"{where}: the model file {model} is missing or does not match the manifest's size/sha256; "
                            "re-export instead of upgrading")
    m.spec()
    return _seal_and_write(m, mp)


def read_manifest(path: str | Path) -> Manifest:
    """Read the manifest of an artifact (NAME.onnx or NAME.json). Missing / malformed -> ArtifactError."""
    mp = manifest_path(path)
    if not mp.is_file():
        raise ArtifactError(
            f"missing manifest: no {mp.name} beside {Path(path).name}, so this is an unknown file; "
            "export it with `streamcad export` or pass --allow-unverified"
        )
    return Manifest.from_dict(_read_json(mp), where=f"manifest {mp.name}")


def _ort_max_opset() -> int | None:
    try:
        v = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None
    major_minor = tuple(int(x) for x in v.split(".")[:2] if x.isdigit())
    best = None
    for ver, opset in _ORT_MAX_OPSET:
        if major_minor >= ver:
            best = opset
    return best


def verify_artifact(path: str | Path, manifest: Manifest) -> str:
    """Check `path` against its manifest -> the verified sha256. ArtifactError names the failed check."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"model file not found: {p}")
    if manifest.file != p.name:
        raise ArtifactError(f"manifest names file {manifest.file!r}, not {p.name!r}: renamed or wrong manifest")
    fmt = FORMATS.get(p.suffix.lower())
    if fmt != manifest.format:
        raise ArtifactError(f"{p.name}: manifest format {manifest.format!r} but the file suffix means {fmt!r}")
    if manifest.format == "onnx":
        opset = manifest.format_version
        max_opset = _ort_max_opset()
        if not isinstance(opset, int) or opset < 7:
            raise ArtifactError(f"{p.name}: unsupported format version (ONNX opset) {opset!r}; expected an int >= 7")
        if max_opset is not None and opset > max_opset:
            raise ArtifactError(
                f"{p.name}: unsupported format version: ONNX opset {opset} is newer than this onnxruntime runs (<= {max_opset})"
            )
    size = p.stat().st_size
    if size != manifest.size_bytes:
        raise ArtifactError(
            f"{p.name}: size mismatch: {size} bytes on disk, {manifest.size_bytes} in the manifest (truncated or replaced file)"
        )
    digest = sha256_file(p)
    if digest != manifest.sha256:
        raise ArtifactError(
            f"{p.name}: sha256 mismatch: file {digest[:16]}…, manifest {manifest.sha256[:16]}… (tampered or corrupt file)"
        )
    manifest.check_contract(f"manifest of {p.name}")
    return digest


def load_model(
    path: str | Path, backend: str = "onnxruntime", allow_unverified: bool = False, **options: Any
) -> LoadedModel:
    """Verify `path` against its manifest, load it with `backend`, and check the input contract.

    path (NAME.onnx | NAME.engine | NAME.pt) + NAME.json --verify--> backend --S == manifest S-->
    LoadedModel. Without a manifest the file is refused unless allow_unverified=True; then a
    warning is logged and the preprocessing is PreprocessSpec(size=S read from the model) (or the
    spec a torch checkpoint carries).
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"model file not found: {p}")
    manifest: Manifest | None
    if manifest_path(p).is_file() or not allow_unverified:
        manifest = read_manifest(p)
        digest = verify_artifact(p, manifest)
    else:
        log.warning("loading %s WITHOUT a manifest (--allow-unverified): its origin and integrity are unchecked", p.name)
        manifest, digest = None, sha256_file(p)
    be = load_backend(backend, p, **options)
    try:
        if manifest is None:
            spec = PreprocessSpec.from_dict(be.preprocess) if be.preprocess else PreprocessSpec(size=be.input_size)
            class_names = CLASS_NAMES
        else:
            spec = manifest.spec()
            class_names = tuple(manifest.class_names)
            if manifest.input_size != be.input_size:
                raise ArtifactError(
                    f"{p.name}: input contract mismatch: the model takes S={be.input_size}, the manifest says {manifest.input['shape']}"
                )
        if spec.size != be.input_size:
            raise ArtifactError(
                f"{p.name}: input contract mismatch: preprocessing size {spec.size} != model input S {be.input_size}"
            )
        gate = _gate(p.name, manifest, be)
    except Exception:
        be.close()
        raise
    return LoadedModel(backend=be, manifest=manifest, spec=spec, class_names=class_names, sha256=digest, gate=gate)


def _gate(name: str, manifest: Manifest | None, be: Backend) -> Any:
    """The manifest's out-of-domain gate, checked against the backend's embedding output."""
    if manifest is None or not manifest.ood:
        log.info("%s: no out-of-domain gate in the manifest: frames are scored without it (status says 'absent')", name)
        return None
    from streamcad.gate_ood import OodGate

    gate = OodGate.from_dict(manifest.ood, where=f"manifest {manifest_path(name).name} ood")
    if be.embedding_dim is None:
        raise ArtifactError(
            f"{name}: the manifest carries an out-of-domain gate (D={gate.dim}) but the model has no 'embedding' output; "
            "export it again with `streamcad export`, or remove the gate with `streamcad train gate --remove`"
        )
    if be.embedding_dim != gate.dim:
        raise ArtifactError(
            f"{name}: the out-of-domain gate expects embeddings of D={gate.dim}, the model's 'embedding' output has "
            f"D={be.embedding_dim}; recalibrate with `streamcad train gate {name}`"
        )
    return gate
