"""Plug-ins are built by their registry from their own typed options (issue 11): every backend
and sink declares a strict msgspec options Struct (an unknown key is named), the registry builds
the plug-in from it (a real ONNX Runtime session, a real MemorySink, a real ZeroMQ publisher on
127.0.0.1), an option a plug-in cannot honour is a one-line error naming the key, the plug-in
and what it accepts, and engines/evaluate.py gets its backend's options from the same registry."""

from __future__ import annotations

import time

import msgspec
import numpy as np
import pytest
from helpers_onnx import make_contract_onnx, reference_outputs

from streamcad.backends import (
    BackendOptions,
    backend_options_type,
    load_backend,
    options_from_model,
)
from streamcad.backends.onnxruntime import OnnxRuntimeOptions
from streamcad.backends.tensorrt import TensorRTOptions
from streamcad.backends.torch import TorchOptions
from streamcad.client import Subscriber
from streamcad.config import ModelConfig, config_from_dict
from streamcad.errors import BackendError, ConfigError
from streamcad.messages import ScoreStream
from streamcad.sinks import MemorySink, build_sink, sink_names, sink_options
from tests.helpers_stream import free_port


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return make_contract_onnx(tmp_path_factory.mktemp("m") / "net.onnx", size=32, saliency_hw=(4, 4), seed=7)


def _model(onnx_path, **keys) -> ModelConfig:
    return config_from_dict({"model": {"path": str(onnx_path), "allow_unverified": True, **keys}}).model


# ----------------------------------------------------------------------------- backends


@pytest.mark.parametrize("options_type", [OnnxRuntimeOptions, TorchOptions, TensorRTOptions])
def test_each_backends_options_reject_an_unknown_key_by_name(options_type):
    assert issubclass(options_type, BackendOptions)
    with pytest.raises(msgspec.ValidationError, match="unknown field `cuda_graphs`"):
        msgspec.convert({"cuda_graphs": True}, options_type)


def test_backend_options_carry_value_constraints():
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int` >= 0.*intra_op_threads"):
        msgspec.convert({"intra_op_threads": -1}, OnnxRuntimeOptions)
    with pytest.raises(msgspec.ValidationError, match="graph_optimization"):
        msgspec.convert({"graph_optimization": "max"}, OnnxRuntimeOptions)
    with pytest.raises(msgspec.ValidationError, match=r"cuda_graph_batch"):
        msgspec.convert({"cuda_graph_batch": 0}, TorchOptions)
    with pytest.raises(msgspec.ValidationError, match=r"device"):
        msgspec.convert({"device": "cpu"}, TensorRTOptions)  # an engine runs on a GPU only


def test_the_registry_builds_a_real_ort_backend_from_the_model_section(onnx_path):
    m = _model(onnx_path, threads=1, device="cpu")
    opts = options_from_model(m)
    assert backend_options_type("onnxruntime") is OnnxRuntimeOptions
    assert opts == OnnxRuntimeOptions(providers=("cpu",), intra_op_threads=1)
    x = np.random.default_rng(1).normal(size=(2, 1, 32, 32)).astype(np.float32)
    with load_backend("onnxruntime", onnx_path, **msgspec.structs.asdict(opts)) as be:
        assert (be.device, be.providers[0], be.precision) == ("cpu", "CPUExecutionProvider", "fp32")
        out = be.infer(x)
    np.testing.assert_allclose(out["logits"], reference_outputs(onnx_path, x)["logits"], rtol=1e-4, atol=1e-5)


def test_a_bad_backend_option_names_the_key_and_what_the_backend_accepts(onnx_path):
    with pytest.raises(BackendError, match=r"backend 'onnxruntime': bad options \['warmup'\].*"
                                           r"expected some of \[providers, intra_op_threads, inter_op_threads, "
                                           r"graph_optimization, io_binding\]"):
        load_backend("onnxruntime", onnx_path, warmup=3)
    with pytest.raises(BackendError, match=r"backend 'onnxruntime': intra_op_threads=-2: Expected `int` >= 0"):
        load_backend("onnxruntime", onnx_path, intra_op_threads=-2)


def test_a_model_key_onnxruntime_cannot_honour_is_a_one_line_error(onnx_path):
    with pytest.raises(ConfigError, match=r"^model.cuda_graph = true: replay a captured CUDA graph; backend "
                                          r"'onnxruntime' does not take it \(leave it out\); onnxruntime takes "
                                          r"model.threads, model.device, model.precision"):
        options_from_model(_model(onnx_path, cuda_graph=True))
    with pytest.raises(ConfigError, match=r"^model.threads = 2: .*backend 'tensorrt' does not take it.*"
                                          r"tensorrt takes model.device, model.precision, model.cuda_graph"):
        options_from_model(ModelConfig(backend="tensorrt", threads=2)) if _cpus() >= 2 else pytest.skip("1 CPU")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def test_fp16_on_a_cpu_ort_session_is_refused_with_what_it_accepts(onnx_path):
    from streamcad.pipeline import _load_model

    cfg = config_from_dict({"model": {"path": str(onnx_path), "allow_unverified": True, "precision": "fp16"}})
    with pytest.raises(BackendError, match=r"^model.precision = 'fp16' but backend 'onnxruntime' runs net.onnx in "
                                           r"fp32; onnxruntime accepts model.precision = 'fp32' only"):
        _load_model(cfg)


def test_evaluate_builds_its_backend_options_through_the_registry(onnx_path):
    from streamcad.engines.evaluate import _options

    opts = _options("onnxruntime", "cpu")
    assert opts == msgspec.structs.asdict(OnnxRuntimeOptions(providers=("cpu",), intra_op_threads=1))
    with load_backend("onnxruntime", onnx_path, **opts) as be:
        assert be.device == "cpu" and be.input_size == 32
    with pytest.raises(BackendError, match="unknown backend 'onnx'"):
        _options("onnx", None)


# ----------------------------------------------------------------------------- sinks


SECTIONS = {"zmq": "publish", "record": "record", "preview": "preview", "igtl": "igtl", "memory": "memory"}


def test_every_sink_is_registered_with_its_options():
    assert sink_names() == ["zmq", "record", "preview", "igtl", "memory"]
    assert sink_names(configured=True) == ["zmq", "record", "preview", "igtl"]


@pytest.mark.parametrize("name", list(SECTIONS))
def test_each_sinks_options_reject_an_unknown_key_naming_it(name):
    with pytest.raises(ConfigError, match=rf"^{SECTIONS[name]}.bogus: unknown key for sink '{name}'; it accepts \w"):
        sink_options(name, {"bogus": 1})


def test_sink_options_keep_their_constraints():
    with pytest.raises(ConfigError, match=r"^igtl.port: Expected `int` <= 65535.*\(sink 'igtl'\)"):
        sink_options("igtl", {"port": 70000})
    with pytest.raises(ConfigError, match=r"^memory.capacity: Expected `int` >= 0"):
        sink_options("memory", {"capacity": -1})
    with pytest.raises(ConfigError, match="curve_allowed_dir is set but curve_secret_key is not"):
        sink_options("zmq", {"curve_allowed_dir": "/tmp"})
    # the config's unknown-key error names the sink's own keys, as before
    with pytest.raises(ConfigError, match=r"publish.endpont: unknown key; valid keys here: endpoint, allow_remote"):
        config_from_dict({"publish": {"endpont": "tcp://127.0.0.1:1"}})


def test_the_registry_builds_a_memory_sink_from_its_options():
    sink = build_sink("memory", {"capacity": 1, "wants_frames": True})
    assert isinstance(sink, MemorySink) and sink.wants_frames and sink.capacity == 1
    s = ScoreStream("m")
    assert sink.write_status(s.status()) is True
    assert sink.write_status(s.status()) is False and sink.dropped == 1
    assert build_sink("preview", {"enabled": False}) is None  # off: not built


def test_the_registry_builds_a_real_zmq_publisher_from_its_options():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    scores = ScoreStream("opt", heartbeat_s=0.5)
    pub = build_sink("zmq", {"endpoint": endpoint, "stream": "opt", "encoding": "msgpack"}, {"scores": scores})
    try:
        assert (pub.name, pub.stream, pub.publisher_id) == ("zmq", "opt", scores.publisher_id)
        with Subscriber(endpoint, rcvhwm=1000) as sub:
            end = time.monotonic() + 20
            while pub.subscriptions < 1 and time.monotonic() < end:
                pub.poll()
                time.sleep(0.01)
            assert pub.subscriptions >= 1
            sent = scores.status()
            assert pub.write_status(sent)
            got = None
            end = time.monotonic() + 10
            while got is None and time.monotonic() < end:
                got = sub.recv(timeout=0.2)
        assert got == sent
    finally:
        pub.close()
