"""The public API is small and deliberate: changing it must change this test."""

import subprocess
import sys

import streamcad

EXPECTED = {
    "__version__", "StreamcadError", "PreprocessSpec", "preprocess", "Subscriber", "Publisher",
    "Score", "Status", "Pipeline", "RunConfig", "load_config", "load_model", "load_backend", "open_source",
}


def test_all_is_exactly_the_public_api():
    assert set(streamcad.__all__) == EXPECTED
    for name in streamcad.__all__:
        assert getattr(streamcad, name) is not None


def test_import_is_light():
    code = "import sys, streamcad; print(sorted(m for m in ('zmq', 'onnxruntime', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
