"""`streamcad info [--json]`: versions, available backends (with reasons), ORT providers, GPUs.
`streamcad info --config`: every config key with its default and the reason for it, as TOML
(generated from streamcad.config's classes and their comments; README's config block is this).

The machine block is streamcad.machine's (the one benchmarks and training records carry). Never
imports torch or TensorRT just to report them: versions come from package metadata, GPUs from
nvidia-smi; torch.cuda is asked only when torch is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import sys

log = logging.getLogger(__name__)

HELP = "versions, available backends and GPUs"

_DISTS = {
    "numpy": "numpy",
    "opencv": "opencv-python-headless",
    "onnxruntime": "onnxruntime",  # or onnxruntime-gpu (the gpu extra): same module
    "pyzmq": "pyzmq",
    "msgspec": "msgspec",
    "rich": "rich",
    "torch": "torch",
    "tensorrt": "tensorrt",
    "onnx": "onnx",
    "scikit-learn": "scikit-learn",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--config", action="store_true",
                   help="print every config key with its default (TOML, comments = the reasons) and exit")


def _field_comments(cls: type) -> dict[str, tuple[list[str], str]]:
    """Comments of a config class's fields from its source: name -> (comment lines above the
    field, the comment at the end of its line)."""
    import inspect
    import io
    import tokenize

    src = inspect.getsource(cls)
    out: dict[str, tuple[list[str], str]] = {}
    above: list[str] = []
    for tok_line in src.splitlines()[1:]:
        line = tok_line.strip()
        if line.startswith("#"):
            above.append(line[1:].strip())
            continue
        name = line.split(":", 1)[0].strip()
        if ":" in line and name.isidentifier() and not line.startswith(("def ", "class ", "@")) and tok_line.startswith("    ") \
                and not tok_line.startswith("     "):
            trailing = ""
            try:
                for tok in tokenize.generate_tokens(io.StringIO(line + "\n").readline):
                    if tok.type == tokenize.COMMENT:
                        trailing = tok.string[1:].strip()
            except tokenize.TokenError:
                pass
            out[name] = (above, trailing)
        above = []
    return out


def _placeholder(tp: object) -> str:
    """A TOML-looking placeholder for a key whose default is None (so it is shown commented out)."""
    import types
    import typing

    while True:
        args = typing.get_args(tp)
        origin = typing.get_origin(tp)
        if origin is typing.Union or origin is types.UnionType:
            tp = next(a for a in args if a is not type(None))
        elif origin is typing.Annotated:
            tp = args[0]
        else:
            break
    if typing.get_origin(tp) is list:
        return "[" + ", ".join([_placeholder(typing.get_args(tp)[0])] * 2) + ", ...]"
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(_toml_value(a) for a in typing.get_args(tp))
    return {int: "<int>", float: "<float>", str: '"<text>"', bool: "<true|false>"}.get(tp, "<value>")


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def default_config_toml() -> str:
    """Every key of streamcad.config.RunConfig with its default, as TOML that loads back to the
    defaults. A key whose default is None (= not set) is shown commented out with a placeholder;
    each key carries its comments from streamcad/config.py (the reasons behind the defaults)."""
    import msgspec

    from streamcad.config import RunConfig

    def section(cls: type, header: str | None) -> list[str]:
        notes = _field_comments(cls)
        lines = [f"[{header}]"] if header else []
        for f in msgspec.structs.fields(cls):
            if isinstance(f.default, msgspec.Struct):
                continue  # a [section], rendered on its own
            default = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
            above, trailing = notes.get(f.name, ([], ""))
            lines += [f"# {c}" for c in above]
            body = f"# {f.name} = {_placeholder(f.type)}" if default is None else f"{f.name} = {_toml_value(default)}"
            lines.append(f"{body:<28} # {trailing}" if trailing else body)
        return lines

    out = section(RunConfig, None)
    for f in msgspec.structs.fields(RunConfig):
        if isinstance(f.default, msgspec.Struct):
            out += ["", *section(type(f.default), f.name)]
    return "\n".join(out) + "\n"


def _torch_cuda() -> dict | str:
    try:
        if importlib.util.find_spec("torch") is None:
            return "torch not installed"
        import torch  # only here: torch is installed, and the user asked for the full report
    except ImportError as exc:  # installed but broken (or blocked)
        return f"torch not importable: {exc}"

    if not torch.cuda.is_available():
        return f"torch {torch.__version__}: no CUDA device"
    return {
        "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def collect() -> dict:
    """Everything `info` reports, as a JSON-ready dict: streamcad.machine.machine_info (the
    machine block benchmarks and training records carry) plus the versions by module name,
    the backends, ONNX Runtime's providers and what torch sees of CUDA. `gpus` is the GPU list,
    or the reason there is none (nvidia-smi missing or failing)."""
    import streamcad
    from streamcad.backends import available_backends
    from streamcad.machine import machine_info, package_version

    try:
        import onnxruntime as ort

        providers: list[str] | str = ort.get_available_providers()
    except ImportError as exc:
        providers = f"onnxruntime not importable: {exc}"
    machine = machine_info()
    return {
        "streamcad": streamcad.__version__,
        **machine,
        "versions": {k: package_version(d) for k, d in _DISTS.items()},
        "backends": available_backends(),
        "onnxruntime_providers": providers,
        "gpus": machine["gpus"] if machine["gpu_error"] is None else machine["gpu_error"],
        "torch_cuda": _torch_cuda(),
    }


def run(args: argparse.Namespace) -> int:
    if args.config:
        sys.stdout.write(default_config_toml())
        return 0
    info = collect()
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console()
    con.print(f"streamcad {info['streamcad']}  python {info['python']}  {info['platform']}")
    con.print(escape(f"{info['cpu']}: {info['cores']} cores ({info['affinity_cores']} usable), {info['memory_gb']} GB"))
    t = Table("package", "version")
    for k, v in info["versions"].items():
        t.add_row(k, v or "[dim]not installed[/dim]")
    con.print(t)
    t = Table("backend", "status")
    for k, v in info["backends"].items():
        t.add_row(k, "[green]available[/green]" if v is None else f"[yellow]unavailable[/yellow]: {escape(v)}")
    con.print(t)
    prov = info["onnxruntime_providers"]
    con.print("onnxruntime providers: " + escape(", ".join(prov) if isinstance(prov, list) else prov))
    gpus = info["gpus"]
    if isinstance(gpus, list) and gpus:
        for g in gpus:
            con.print(f"GPU {g['index']}: {g['name']} {g['memory_mib']} MiB, driver {g['driver']}, sm {g['compute_capability']}")
    else:
        con.print(escape(f"GPUs: {gpus or 'none'}"))
    con.print(escape(f"torch CUDA: {info['torch_cuda']}"))
    return 0
