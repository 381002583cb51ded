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
