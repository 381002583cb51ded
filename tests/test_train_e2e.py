"""End to end on real BUS-BRA images: SSL pretrain -> fine-tune -> evaluate -> result JSON.

A handful of images (S=64, the 'tiny' model, a few epochs) so it runs in seconds; the SSL pool
comes from patients disjoint from the labelled set, as the protocol requires.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training test: needs the train extra")

from streamcad.preprocess import letterbox  # noqa: E402

S = 64


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning makes 2 threads slower
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_busbra(busbra_dir):
    """80 labelled images (40 benign, 40 malignant, one per patient, 4 patient-wise folds) and a
    48-image unlabeled pool from 48 other patients."""
    from streamcad.train.data import LabeledArrays
    from streamcad.train.data.datasets import load_busbra, read_gray, read_mask

    samples = load_busbra(busbra_dir.parent)
    seen, picked = set(), {1: [], 2: []}
    pool_samples = []
    for s in samples:
        if s.group in seen:
            continue
        seen.add(s.group)
        if len(picked[s.label]) < 40:
            picked[s.label].append(s)
        elif len(pool_samples) < 48:
            pool_samples.append(s)
    chosen = picked[1] + picked[2]
    imgs, masks = [], []
    for s in chosen:
        g = read_gray(s.path)
        imgs.append(letterbox(g, S))
        masks.append(letterbox(read_mask(s.mask_paths, g.shape), S))
    labels = np.array([s.label for s in chosen], np.int64)
    folds = np.array([i % 4 for i in range(40)] * 2, np.int64)
    arrays = LabeledArrays(np.stack(imgs), np.stack(masks), labels, np.array([s.group for s in chosen]), folds,
                           np.array([s.image_id for s in chosen]))
    pool = np.stack([letterbox(read_gray(s.path), S) for s in pool_samples])
    assert not {s.group for s in pool_samples} & set(arrays.groups)
    return arrays, pool


def test_pretrain_finetune_evaluate_end_to_end(small_busbra, tmp_path, one_thread):
    from streamcad.train.common import load_checkpoint
    from streamcad.train.evaluate import predict_logits, softmax
    from streamcad.train.experiment import (
        TABLE_BEGIN,
        TABLE_END,
        cpu_config,
        render_table,
        run_experiment,
        update_doc_table,
    )
    from streamcad.train.model import build_model

    arrays, pool = small_busbra
    cfg = cpu_config(size=S, folds=(0,), epochs_ssl=3, epochs_ft=6, batch_ssl=16, batch_ft=16, ssl_steps_per_epoch=3,
                     patience=6, device="cpu", augment=False, n_boot=50, lr_ft=3e-3)
    out, work = tmp_path / "results", tmp_path / "work"
    paths = run_experiment(["busbra"], ["ours"], cfg, out, work, data={"busbra": (arrays, pool, None, "test-split")})
    assert [p.name for p in paths] == ["busbra__ours.json"]
    r = json.loads(paths[0].read_text())

    # provenance and metrics with CIs
    assert r["split_sha256"] == "test-split" and r["git_commit"] and r["machine"]["cpu_count"]
    assert r["ssl"]["pool_images"] == 48 and r["ssl"]["cached"] is False
    fold = r["per_fold"][0]
    assert fold["n_test"] == 20 and fold["n_train"] + fold["n_val"] == 60
    auc = r["pooled"]["auc"]
    assert 0.0 <= auc["ci_low"] <= auc["value"] <= auc["ci_high"] <= 1.0
    assert len(r["oof_predictions"]["labels"]) == 20
    for key in ("roc", "reliability"):
        assert (out / r["plots"][key]).read_bytes()[:4] == b"\x89PNG"

    # SSL ran 3 epochs on the pool (finite losses); fine-tuning lowered the training loss
    ssl_ckpt = load_checkpoint(r["ssl"]["path"])
    ssl_losses = [h["loss"] for h in ssl_ckpt["history"]]
    assert len(ssl_losses) == 3 and np.isfinite(ssl_losses).all() and ssl_ckpt["kind"] == "ssl"
    ft_losses = [h["loss"] for h in fold["history"]]
    assert ft_losses[-1] < 0.8 * ft_losses[0]

    # the classifier checkpoint follows the contract and reproduces the reported probabilities
    ck = load_checkpoint(fold["checkpoint"])
    assert ck["kind"] == "classifier" and ck["temperature"] > 0 and 0 <= ck["threshold"] <= 1
    assert ck["train_config"]["init"].endswith("ssl.pt") and ck["preprocess"]["size"] == S
    model = build_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    test = arrays.subset(arrays.folds == 0)
    probs = softmax(predict_logits(model, test.images, ck["preprocess"]["mean"], ck["preprocess"]["std"]), ck["temperature"])
    np.testing.assert_allclose(probs[:, 2], r["oof_predictions"]["p_malignant"], atol=1e-5)

    # a second run reuses the cached SSL checkpoint (the fine-tune recipe is not in its key)
    short = cfg.__class__(**{**cfg.__dict__, "epochs_ft": 1})
    r3 = json.loads(run_experiment(["busbra"], ["ours"], short, tmp_path / "r3", work,
                                   data={"busbra": (arrays, pool, None, "test-split")})[0].read_text())
    assert r3["ssl"]["cached"] is True and r3["ssl"]["path"] == r["ssl"]["path"]
    table = render_table(out)
    assert "| busbra | ours | 0 |" in table and f"{auc['value']:.3f} [{auc['ci_low']:.3f}" in table

    # a sub-folder of results (another protocol) gets its own table in the doc, between the markers
    (out / "cpu").mkdir()
    (out / "cpu" / "busbra__ours.json").write_text((tmp_path / "r3" / "busbra__ours.json").read_text())
    doc = tmp_path / "TRAINING.md"
    doc.write_text(f"intro\n{TABLE_BEGIN}\nstale table\n{TABLE_END}\nafter\n")
    text = update_doc_table(doc, out).read_text()
    assert "stale table" not in text and text.startswith("intro\n") and text.endswith(f"{TABLE_END}\nafter\n")
    assert text.index("**`results/`**") < text.index("**`results/cpu/`**")
    assert text.count("| busbra | ours | 0 |") == 2 and "tiny, 64, 3/6" in text and "tiny, 64, 3/1" in text
