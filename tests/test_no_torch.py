"""The runtime works where torch and TensorRT cannot be imported: `import streamcad`, every
streamcad.* module, `streamcad info` and `streamcad --help`, in a subprocess whose meta-path
finder refuses torch/tensorrt. Afterwards 'torch' must not be in sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib, io, json, pkgutil, sys, contextlib

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "tensorrt"):
                raise ImportError(f"{name} blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    import streamcad
    failed = {}
    names = []
    for m in pkgutil.walk_packages(streamcad.__path__, "streamcad."):
        names.append(m.name)
        try:
            importlib.import_module(m.name)
        except ImportError as exc:  # only the tensorrt backend may need its engine at import,
            # streamcad.nets torch (the torch backend's networks, imported inside its constructor),
            # and a module of a runtime extra its extra (streamcad.viewer.server: aiohttp, the viewer extra)
            from streamcad.extras import EXTRA_OF_MODULE
            extra = EXTRA_OF_MODULE.get((getattr(exc, "name", None) or "").split(".")[0])
            nets = m.name == "streamcad.nets" and "torch" in str(exc)
            if m.name != "streamcad.backends.tensorrt" and not nets and extra not in ("viewer", "igtl"):
                failed[m.name] = repr(exc)
    from streamcad.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc_info = main(["info", "--json"])
    info = json.loads(buf.getvalue())
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--help"])
        except SystemExit as exc:
            rc_help = exc.code
    print(json.dumps({"names": names, "failed": failed, "rc_info": rc_info, "rc_help": rc_help,
                      "backends": info["backends"], "torch_loaded": "torch" in sys.modules,
                      "tensorrt_loaded": "tensorrt" in sys.modules}))
    """
)


def test_runtime_without_torch(repo_root):
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "streamcad.backends.onnxruntime" in out["names"] and "streamcad.manifest" in out["names"]
    assert out["failed"] == {}
    assert out["rc_info"] == 0 and out["rc_help"] == 0
    assert out["backends"]["onnxruntime"] is None
    assert out["backends"]["torch"] and out["backends"]["tensorrt"]  # each unavailable, with a reason
    assert not out["torch_loaded"] and not out["tensorrt_loaded"]
