"""streamcad.engines.compose: two real exported graphs behind one input, run by ONNX Runtime.
The composite's logits and lesion map are the classifier's, its embedding is the gate model's,
its manifest carries the gate model's gate; pairs that cannot be composed are refused in one line."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from streamcad.engines.compose import compose  # noqa: E402
from streamcad.errors import ArtifactError  # noqa: E402
from streamcad.manifest import read_manifest, verify_artifact, write_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "engines" / "models" / "default.onnx"  # the composite of the two below
CANDIDATE = REPO / "train" / "results" / "v2" / "ssl-candidate" / "lite0-ssl.onnx"
GATE_MODEL = REPO / "train" / "results" / "v2" / "gate-model" / "lite0.onnx"


def _outputs(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input": x}), strict=True))


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
    if not (CANDIDATE.is_file() and GATE_MODEL.is_file()):
        pytest.skip("the shipped composite's parent graphs are not in this checkout")
    return compose(CANDIDATE, GATE_MODEL, tmp_path_factory.mktemp("comp") / "composite.onnx")


def test_the_composite_is_the_classifier_with_the_gate_models_embedding(composite):
    x = np.random.default_rng(0).normal(0, 1, (3, 1, 160, 160)).astype(np.float32)
    c, a, b = _outputs(composite, x), _outputs(CANDIDATE, x), _outputs(GATE_MODEL, x)
    assert set(c) == {"logits", "saliency", "embedding"}
    np.testing.assert_array_equal(c["logits"], a["logits"])
    np.testing.assert_array_equal(c["saliency"], a["saliency"])
    np.testing.assert_array_equal(c["embedding"], b["embedding"])
    assert not np.array_equal(a["embedding"], b["embedding"])  # the two parents' embeddings differ
    m, mc, mg = read_manifest(composite), read_manifest(CANDIDATE), read_manifest(GATE_MODEL)
    verify_artifact(composite, m)
    assert m.ood == mg.ood and m.operating_threshold == mc.operating_threshold and m.temperature == mc.temperature
    assert m.source["classifier"]["sha256"] == mc.sha256 and m.source["gate_model"]["sha256"] == mg.sha256


def test_the_runtime_loads_the_composite_with_its_gate(composite):
    from streamcad.manifest import load_model

    with load_model(composite) as lm:
        assert lm.gate is not None and lm.gate.threshold == read_manifest(GATE_MODEL).ood["threshold"]


def test_the_shipped_default_is_the_composite_of_its_committed_parents(composite):
    """engines/models/default.onnx is rebuilt byte for byte from the two committed graphs its manifest
    names, and its manifest carries their threshold, temperature and gate."""
    ms, m = read_manifest(SHIPPED), read_manifest(composite)
    verify_artifact(SHIPPED, ms)
    assert ms.sha256 == m.sha256
    assert ms.source["classifier"]["sha256"] == read_manifest(CANDIDATE).sha256
    assert ms.source["gate_model"]["sha256"] == read_manifest(GATE_MODEL).sha256
    assert (ms.operating_threshold, ms.temperature, ms.ood) == (m.operating_threshold, m.temperature, m.ood)


def test_a_gate_model_without_a_gate_is_refused(tmp_path):
    import shutil

    if not GATE_MODEL.is_file():
        pytest.skip("the gate model's graph is not in this checkout")
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(GATE_MODEL, bare)
    d = read_manifest(GATE_MODEL).to_fields()
    d["ood"] = {}
    write_manifest(bare, **d)
    with pytest.raises(ArtifactError, match="carries no out-of-domain gate"):
        compose(GATE_MODEL, bare, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
