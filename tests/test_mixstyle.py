"""MixStyle (train/mixstyle.py): the mixed maps carry the mixed statistics and the unchanged content;
the hooks act on the trained model in training mode only (so evaluation, the EMA and the export run
the plain network), and a MixStyle run's checkpoint is scored by ONNX Runtime as training scored it."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.nets import LITE0_FEATURES, build_model  # noqa: E402
from streamcad.train.config import RecipeConfig  # noqa: E402
from streamcad.train.mixstyle import MixStyle, attach, mix_statistics  # noqa: E402


def _stats(x):
    return x.mean(dim=(2, 3)), x.var(dim=(2, 3)).add(1e-6).sqrt()


def test_mixed_maps_carry_the_mixed_statistics_and_the_same_content():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 9, 9, generator=g) * torch.rand(6, 5, 1, 1, generator=g) * 3 + torch.randn(6, 5, 1, 1, generator=g)
    lam = torch.tensor([1.0, 0.0, 0.3, 0.9, 0.5, 0.1])
    perm = torch.tensor([1, 0, 3, 2, 5, 4])
    y = mix_statistics(x, lam, perm)
    (mu, sig), (mu_y, sig_y) = _stats(x), _stats(y)
    lam2 = lam[:, None]
    torch.testing.assert_close(mu_y, lam2 * mu + (1 - lam2) * mu[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sig_y, lam2 * sig + (1 - lam2) * sig[perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y[0], x[0])  # lambda 1: its own style
    # the content (the normalised map) is the image's own
    torch.testing.assert_close((y - mu_y[..., None, None]) / sig_y[..., None, None],
                               (x - mu[..., None, None]) / sig[..., None, None], atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="mix_statistics"):
        mix_statistics(x[0], lam, perm)
    with pytest.raises(ConfigError, match="MixStyle"):
        MixStyle(p=0)
    with pytest.raises(ConfigError, match="mixstyle"):
        RecipeConfig(mixstyle=1.5)


def test_hooks_mix_the_stage_outputs_in_training_only():
    torch.manual_seed(0)
    model = build_model("lite0", pretrained=False)
    x = torch.rand(4, 1, 64, 64)
    model.eval()
    with torch.no_grad():
        plain = model.forward_features(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mix = MixStyle(p=1.0)
    handles = attach(model, [model.blocks[i] for i in LITE0_FEATURES[:3]], mix)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.forward_features(x), plain, strict=True))  # eval: untouched
        model.train()  # the frozen blocks 0-2 stay in eval mode: the model's flag decides
        mix.reseed(7)
        mixed = model.forward_features(x)
    rng = np.random.default_rng(7)  # the draws of the first insertion point (block 2, frozen: deterministic)
    assert rng.random() < 1.0
    lam, perm = torch.from_numpy(rng.beta(0.1, 0.1, 4)), torch.from_numpy(rng.permutation(4))
    torch.testing.assert_close(mixed[0], mix_statistics(plain[0], lam, perm))
    assert not torch.allclose(mixed[0], plain[0])
    for h in handles:
        h.remove()
    model.load_state_dict(state)  # the training-mode pass moved the BatchNorm statistics
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x)[3], plain[3])


def test_a_mixstyle_run_exports_the_plain_network(tmp_path, data_root):
    """1 epoch, every 40th image, MixStyle on every batch: the recipe is recorded, and the exported
    graph (no hooks in it) reproduces the run's test probabilities, so evaluation ran without mixing."""
    from streamcad.engines.export import export_checkpoint
    from streamcad.manifest import load_model
    from streamcad.preprocess import PreprocessSpec
    from streamcad.train.cv import load_both, run, select

    res = run(RecipeConfig(epochs=1, batch_size=8, mixstyle=1.0), "cv", tmp_path / "fold0", fold=0, limit=40)
    saved = json.loads((tmp_path / "fold0" / "result.json").read_text())
    assert saved["recipe"]["mixstyle"] == 1.0
    out = tmp_path / "m.onnx"
    manifest, parity = export_checkpoint(tmp_path / "fold0" / "classifier.pt", out, data_root=data_root)
    assert parity.passed
    _, test = select(load_both(160), "cv", fold=0)
    idx = [list(test.ids).index(i) for i in res["predictions"]["ids"][:6]]
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    x = ((test.images[idx].astype(np.float32) / 255 - spec.mean) / spec.std)[:, None]
    logits = load_model(out).backend.infer(x)["logits"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), np.asarray(res["predictions"]["probs"][:6]), atol=1e-4)
