r"""Models of both papers, each a feature backbone plus one or two classification heads.

* ``mlp`` (synthetic features), ``small_cnn`` (Fashion-MNIST on a laptop CPU),
* ``resnet18_cifar`` (3x3 stem, no max-pool), ``densenet_bc_40_40`` (P1's CIFAR-100 model:
  DenseNet-BC, depth 40, growth rate 40, compression 0.5),
* ``resnet50`` (torchvision; ImageNet weights only when ``pretrained=True``, P1's Pl@ntNet model).

Heads: a linear layer, or :class:`NormedLinear` (cosine similarity between the normalised
feature and normalised class weights, in [-1, 1]: the head of LDAM and of the imbalanced noised
loss). :class:`Classifier` with ``two_head=True`` adds the multi-label head of P2 on the same
features and returns ``(softmax_logits, multilabel_logits)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    r"""Cosine head: :math:`s_j = \frac{w_j^\top h}{\lVert w_j\rVert\,\lVert h\rVert} \in [-1, 1]` (Cao et al. 2019)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


class MLP(nn.Module):
    """Two hidden layers with ReLU: features for synthetic data."""

    def __init__(self, in_features: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Three blocks of two 3x3 convolutions (``w``, ``2w``, ``4w`` channels; BN, ReLU), max-pooling
    between them and global average pooling: about 0.07M parameters at the default ``width=16``,
    small enough for Fashion-MNIST epochs of a few seconds on a laptop CPU."""

    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(in_channels, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_features = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18CIFAR(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool, stages of 64-128-256-512."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNetBC(nn.Module):
    """DenseNet-BC for CIFAR (Huang et al. 2017): 3 dense blocks of ``(depth - 4) / 6`` bottleneck
    layers, transitions with compression 0.5. ``depth=40, growth=40`` is P1's CIFAR-100 model."""

    def __init__(self, depth: int = 40, growth: int = 40, in_channels: int = 3, compression: float = 0.5) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
        n_layers = (depth - 4) // 6
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n_layers):
                layers.append(_DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                out = int(math.floor(channels * compression))
                layers += [
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(channels, out, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TorchvisionResNet50(nn.Module):
    """torchvision's ResNet-50 without its classifier; ImageNet weights only if asked for."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        import torchvision

        weights = None
        if pretrained:
            weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
        try:
            net = torchvision.models.resnet50(weights=weights)
        except Exception as err:  # offline machines: say what happened and how to proceed
            raise RuntimeError(
                "could not load ImageNet weights for resnet50 (no internet?). Put the checkpoint in "
                "torch.hub's cache ($TORCH_HOME/hub/checkpoints) or pass pretrained=False."
            ) from err
        net.fc = nn.Identity()
        self.net = net
        self.out_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Classifier(nn.Module):
    """Backbone + head(s). ``forward`` returns logits ``(B, C)``, or with ``two_head=True`` the pair
    ``(softmax_logits, multilabel_logits)`` computed on the same features.

    Args:
        head: ``"linear"`` or ``"cosine"`` (:class:`NormedLinear`).
        two_head: add P2's multi-label head (same kind as ``head``).
        detach_multilabel: stop the multi-label head's gradient at the features, so only the
            softmax head trains the backbone (a P2 choice left open; default False).
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        head: str = "linear",
        two_head: bool = False,
        detach_multilabel: bool = False,
    ) -> None:
        super().__init__()
        if head not in ("linear", "cosine"):
            raise ValueError(f"`head` must be 'linear' or 'cosine', got {head!r}")
        self.backbone = backbone
        dim = backbone.out_features
        make = (lambda: nn.Linear(dim, n_classes)) if head == "linear" else (lambda: NormedLinear(dim, n_classes))
        self.head = make()
        self.multilabel_head = make() if two_head else None
        self.detach_multilabel = detach_multilabel

    @property
    def two_head(self) -> bool:
        return self.multilabel_head is not None

    def forward(self, x: torch.Tensor):
        features = self.backbone(x)
        logits = self.head(features)
        if self.multilabel_head is None:
            return logits
        ml_features = features.detach() if self.detach_multilabel else features
        return logits, self.multilabel_head(ml_features)


MODELS = ("mlp", "small_cnn", "resnet18_cifar", "densenet_bc_40_40", "resnet50")

#: The inputs each model takes, one sample's shape without the batch dimension: ``rank`` is the
#: number of dimensions it needs (``None``: any, the MLP flattens), ``channels`` the first
#: dimension it needs (``None``: any; torchvision's ResNet-50 has a fixed RGB stem) and
#: ``min_side`` the smallest height and width its downsampling leaves a non-empty map for.
MODEL_INPUTS: dict[str, dict[str, int | None]] = {
    "mlp": {"rank": None, "channels": None, "min_side": None},
    "small_cnn": {"rank": 3, "channels": None, "min_side": 4},
    "resnet18_cifar": {"rank": 3, "channels": None, "min_side": None},
    "densenet_bc_40_40": {"rank": 3, "channels": None, "min_side": 4},
    "resnet50": {"rank": 3, "channels": 3, "min_side": None},
}


def check_model_input(name: str, input_shape: tuple[int, ...]) -> None:
    """``ValueError`` naming `model` when model ``name`` cannot take inputs of ``input_shape`` (one
    sample, e.g. ``(16,)`` feature vectors or ``(1, 28, 28)`` images; see :data:`MODEL_INPUTS`)."""
    if name not in MODEL_INPUTS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"`input_shape` must be a non-empty tuple of sizes >= 1, got {input_shape!r}")
    needs = MODEL_INPUTS[name]
    fits = [n for n, m in MODEL_INPUTS.items() if _fits(m, shape)]
    if not _fits(needs, shape):
        what = "images (channels, height, width)" if needs["rank"] == 3 else f"{needs['rank']}-d inputs"
        if needs["channels"] is not None:
            what = f"{what} with {needs['channels']} channels"
        if needs["min_side"] is not None:
            what = f"{what} of at least {needs['min_side']}x{needs['min_side']} pixels"
        raise ValueError(
            f"`model` {name!r} needs {what}, but the data's inputs have shape {shape}; "
            f"models that fit: {', '.join(fits) or 'none'}"
        )


def _fits(needs: dict[str, int | None], shape: tuple[int, ...]) -> bool:
    if needs["rank"] is not None and len(shape) != needs["rank"]:
        return False
    if needs["channels"] is not None and shape[0] != needs["channels"]:
        return False
    return needs["min_side"] is None or min(shape[1:], default=0) >= needs["min_side"]


def build_model(
    name: str,
    n_classes: int,
    input_shape: tuple[int, ...],
    *,
    head: str = "linear",
    two_head: bool = False,
    detach_multilabel: bool = False,
    pretrained: bool = False,
    hidden: int = 128,
) -> Classifier:
    """Build a :class:`Classifier` by name (see :data:`MODELS`); ``ValueError`` naming `model`
    when it cannot take inputs of ``input_shape`` (:func:`check_model_input`)."""
    check_model_input(name, input_shape)
    in_channels = input_shape[0]
    if name == "mlp":
        backbone: nn.Module = MLP(int(math.prod(input_shape)), hidden)
    elif name == "small_cnn":
        backbone = SmallCNN(in_channels)
    elif name == "resnet18_cifar":
        backbone = ResNet18CIFAR(in_channels)
    elif name == "densenet_bc_40_40":
        backbone = DenseNetBC(40, 40, in_channels)
    elif name == "resnet50":
        backbone = TorchvisionResNet50(pretrained)
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return Classifier(backbone, n_classes, head, two_head, detach_multilabel)
