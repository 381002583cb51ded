"""[model] options a backend cannot honour are errors, never a silent CPU / FP32 run (the shipped
model through the real ONNX Runtime backend)."""

from __future__ import annotations

import pytest

from streamcad.config import config_from_dict
from streamcad.errors import BackendError, ConfigError
from streamcad.pipeline import DEFAULT_MODEL, Pipeline, _load_model


def _model(**m):
    return config_from_dict({"model": {"path": str(DEFAULT_MODEL), **m}, "dashboard": False})


def test_onnxruntime_refuses_fp16():
    with pytest.raises(BackendError, match="precision = 'fp16'.*runs default.onnx in fp32"):
        Pipeline(_model(precision="fp16"))


def test_onnxruntime_device_selects_the_provider_or_fails():
    import onnxruntime as ort

    with _load_model(_model(device="cpu")) as model:
        assert model.backend.device == "cpu" and model.backend.providers[0] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        with _load_model(_model(device="cuda")) as model:
            assert model.backend.device == "cuda"
        with pytest.raises(BackendError, match="cuda:1"):
            _load_model(_model(device="cuda:1"))  # ORT here runs CUDA device 0 only
    else:
        with pytest.raises(BackendError, match="CUDAExecutionProvider is not available"):
            _load_model(_model(device="cuda"))
    with pytest.raises(BackendError, match="unknown provider 'tpu'"):
        _load_model(_model(device="tpu"))


def test_onnxruntime_refuses_cuda_graphs():
    with pytest.raises(ConfigError, match="cuda_graph"):
        _load_model(_model(cuda_graph=True))


@pytest.mark.parametrize("uri,key,value", [
    ("file:/nonexistent.mp4", "fps", 30.0),  # a file is paced by its own rate
    ("file:/nonexistent.mp4", "width", 640),
    ("url:rtsp://127.0.0.1:1/x", "loop", True),
    ("gst:videotestsrc ! appsink", "pace", "none"),
    ("device:0", "seed", 3),
    ("sweep:", "fourcc", "MJPG"),
])
def test_a_source_option_the_scheme_cannot_honour_is_an_error(uri, key, value):
    from streamcad.pipeline import _open_source

    cfg = config_from_dict({"source": {"uri": uri, key: value}})
    with pytest.raises(ConfigError, match=rf"source.{key} = .*cannot honour it; {uri.split(':')[0]}: takes"):
        _open_source(cfg)


def test_the_options_a_scheme_takes_reach_it(video_dir):
    from streamcad.pipeline import _open_source

    src = _open_source(config_from_dict({"source": {"uri": "sweep:", "fps": 12.0, "seed": 5, "pace": "none"}}))
    assert src.lossless and src.renderer.fps == 12.0 and src.renderer.seed == 5
    src.close()
    src = _open_source(config_from_dict({"source": {"uri": f"file:{video_dir / 'bk-medical-water-phantom.mp4'}",
                                                    "loop": True, "pace": "none"}}))
    assert src.loop and src.lossless
    src.close()


def test_threads_is_an_onnxruntime_option_only():
    with pytest.raises(ConfigError, match="model.threads = 2: ONNX Runtime's .* backend 'torch' does not take it"):
        _load_model(_model(backend="torch", threads=2))
