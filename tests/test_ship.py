import json
from dataclasses import asdict

import numpy as np
import pytest

from streamcad.train.data import LabeledArrays
from streamcad.train.ship import combine


def _arrays(n, prefix_labels, seed):
    rng = np.random.default_rng(seed)
    return LabeledArrays(
        images=rng.integers(0, 255, (n, 8, 8), dtype=np.uint8),
        masks=np.zeros((n, 8, 8), np.uint8),
        labels=np.array(prefix_labels[:n]),
        groups=np.array([f"g{i // 2}" for i in range(n)]),  # same group names in both datasets
        folds=np.arange(n) % 5,
        ids=np.array([f"img{i}" for i in range(n)]),
    )


def test_combine_keeps_datasets_apart():
    a = _arrays(10, [0, 1, 2] * 4, 0)
    b = _arrays(6, [1, 2] * 3, 1)
    c = combine({"busi": a, "busbra": b})
    assert len(c) == 16
    assert np.array_equal(c.images[:10], a.images) and np.array_equal(c.images[10:], b.images)
    assert np.array_equal(c.folds, np.concatenate([a.folds, b.folds]))
    # equal group names in two datasets are different groups after combining
    assert "busi:g0" in set(c.groups) and "busbra:g0" in set(c.groups)
    assert len(set(c.ids)) == 16
    train, test = c.fold_split(0)
    assert (train.folds != 0).all() and (test.folds == 0).all()
    assert set(test.ids) == {f"busi:img{i}" for i in (0, 5)} | {"busbra:img0", "busbra:img5"}


def test_ship_v2_refuses_a_fold0_run_of_another_recipe(tmp_path):
    """The shipped model is the fold-0 run of the recipe named on the command line: a run trained
    with the whole backbone is refused under the default recipe, naming the flags that select it."""
    pytest.importorskip("torch")
    from streamcad.errors import ConfigError
    from streamcad.train.config import RecipeConfig
    from streamcad.train.release import ship_v2

    fold = tmp_path / "cv" / "fold0"
    fold.mkdir(parents=True)
    fold.joinpath("result.json").write_text(json.dumps({"recipe": asdict(RecipeConfig(frozen_blocks=0, train_stem=True))}))
    with pytest.raises(ConfigError, match="--frozen-blocks, --train-stem"):
        ship_v2(tmp_path / "m.onnx", cv_dir=tmp_path, cv_report=None, report_path=tmp_path / "r.json")


def test_the_committed_model_card_is_what_its_ship_report_generates(tmp_path):
    """engines/models/MODEL_CARD.md says 'do not edit by hand': regenerated from the committed ship
    report and the model's manifest it is byte for byte the committed card, and it names the
    initialisation the recipe used (an SSL start only where the recipe had one)."""
    pytest.importorskip("torch")
    from streamcad.manifest import read_manifest
    from streamcad.train.config import REPO, SHIP_REPORT, SHIPPED_MODEL
    from streamcad.train.release import write_model_card_v2

    report = json.loads(SHIP_REPORT.read_text())
    card = write_model_card_v2(report, tmp_path / "MODEL_CARD.md", read_manifest(SHIPPED_MODEL).sha256).read_text()
    assert card == (REPO / "engines" / "models" / "MODEL_CARD.md").read_text()
    assert ("self-supervised on" in report["training_data"]["initialisation"]) == bool(report["recipe"].get("ssl_init"))


def test_the_ssl_candidate_report_names_its_pretraining_and_its_gate_measurement(tmp_path):
    """Lever 5's candidate (kept by the accuracy protocol, not shipped: docs/TRAINING.md): its ship
    report names the fold-0 pretraining recorded in train/results/v2/ssl, the card generated from it
    states that pretraining's time, and its gate measurement is the committed benchmark of the same graph."""
    pytest.importorskip("torch")
    from streamcad.manifest import read_manifest, verify_artifact
    from streamcad.train.config import REPO
    from streamcad.train.release import write_model_card_v2

    cand = REPO / "train" / "results" / "v2" / "ssl-candidate"
    report = json.loads((cand / "ship-report.json").read_text())
    ssl = json.loads((REPO / "train" / "results" / "v2" / "ssl" / "lite0-dcl-fold0-rebuild.json").read_text())["cv/fold0"]
    ood = json.loads((REPO / "benchmarks" / "results" / "ood_gate-lite0-ssl-candidate.json").read_text())
    states = json.loads((REPO / "benchmarks" / "results" / "nonbreast-states-lite0-ssl-candidate.json").read_text())
    assert report["recipe"]["ssl_init"] and ssl["ssl_sha256"][:12] in report["training_data"]["initialisation"]
    assert report["ood_measured"]["summary"] == ood["summary"]
    assert report["states_measured"]["shipped"]["pooled"] == states["variants"]["shipped"]["pooled"]
    # the committed graph is the one measured, with the gate of the shipped design
    m = read_manifest(cand / "lite0-ssl.onnx")
    verify_artifact(cand / "lite0-ssl.onnx", m)
    assert m.sha256 == ood["model_sha256"] == states["model_sha256"]
    assert m.ood["fitted_on"]["raw_images"] and m.ood["threshold"] == report["ood_gate"]["threshold"]
    card = write_model_card_v2(report, tmp_path / "MODEL_CARD.md", m.sha256).read_text()
    assert card == (cand / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: `train/results/v2/ssl-candidate/lite0-ssl.onnx`")
    assert f"SSL pretraining {ssl['wall_s'] / 60:.0f} min" in card


def test_the_archived_gate_models_card_is_what_its_report_generates(tmp_path):
    """The v2 model without SSL, the shipped composite's gate embedding (train/results/v2/gate-model):
    its committed card is regenerated byte for byte, says what it is to the shipped model, and its
    graph is the one the shipped manifest names as the gate model."""
    pytest.importorskip("torch")
    from streamcad.manifest import read_manifest, verify_artifact
    from streamcad.train.config import GATE_MODEL, SHIPPED_MODEL
    from streamcad.train.release import write_model_card_v2

    report = json.loads(GATE_MODEL.with_name("ship-report.json").read_text())
    m = read_manifest(GATE_MODEL)
    verify_artifact(GATE_MODEL, m)
    card = write_model_card_v2(report, tmp_path / "MODEL_CARD.md", m.sha256).read_text()
    assert card == GATE_MODEL.with_name("MODEL_CARD.md").read_text()
    assert "Not the shipped default since 2026-12-04" in card and not report["recipe"].get("ssl_init")
    assert read_manifest(SHIPPED_MODEL).source["gate_model"]["sha256"] == m.sha256
    assert read_manifest(SHIPPED_MODEL).ood == m.ood


def test_ship_composite_refuses_a_parent_whose_report_names_another_graph(tmp_path):
    """Each parent's ship report must be that graph's: a classifier copied under another name keeps a
    report naming the old one, and the composite is refused before anything is written."""
    import shutil

    pytest.importorskip("onnx")
    from streamcad.errors import ConfigError
    from streamcad.manifest import read_manifest, write_manifest
    from streamcad.train.config import GATE_MODEL, SSL_CANDIDATE
    from streamcad.train.release import ship_composite

    if not (SSL_CANDIDATE.is_file() and GATE_MODEL.is_file()):
        pytest.skip("the composite's parent graphs are not in this checkout")
    clf = tmp_path / "renamed.onnx"
    shutil.copyfile(SSL_CANDIDATE, clf)
    write_manifest(clf, **read_manifest(SSL_CANDIDATE).to_fields())
    shutil.copyfile(SSL_CANDIDATE.with_name("ship-report.json"), tmp_path / "ship-report.json")
    with pytest.raises(ConfigError, match="reports 'lite0-ssl.onnx', not 'renamed.onnx'"):
        ship_composite(clf, GATE_MODEL, tmp_path / "out" / "default.onnx", tmp_path / "report.json")
    with pytest.raises(ConfigError, match="ship report beside"):
        ship_composite(SSL_CANDIDATE, tmp_path / "nowhere" / "g.onnx", tmp_path / "out" / "default.onnx", tmp_path / "report.json")
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.json").exists()
