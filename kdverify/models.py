"""The architectures of the two reference works, one class each, with feature taps.

Every model is `features` (a feature map, or the last hidden layer for MLPs) followed by
`classifier`. `forward_taps` returns the logits together with the flattened hidden
representation and the feature map, so cosine and hint distillation need no copied
`Modified*` variants of a model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn


class Taps(NamedTuple):
    logits: torch.Tensor
    hidden: torch.Tensor  # flattened representation fed to the classifier
    feature_map: torch.Tensor  # output of `features` before flattening (== hidden for MLPs)


class TappedModel(nn.Module):
    """`features` then `classifier`; subclasses only build the two."""

    features: nn.Module
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def forward_taps(self, x: torch.Tensor) -> Taps:
        fmap = self.features(x)
        hidden = torch.flatten(fmap, 1)
        return Taps(self.classifier(hidden), hidden, fmap)

    @property
    def output_layer(self) -> nn.Linear:
        """The final linear layer, whose bias the logit-bias adjustment shifts."""
        return [m for m in self.classifier.modules() if isinstance(m, nn.Linear)][-1]


class RandDropout(nn.Dropout):
    """Inverted dropout whose mask comes from one `torch.rand` call.

    `nn.Dropout` fills its mask with `bernoulli_`, which on CPU ran at ~2 ms per 128x1200 mask (a
    quarter of the Hinton teacher's training step); `rand` fills the same mask ~4x faster. Same
    expectation and scaling as `nn.Dropout`, identity in eval mode, no parameters (checkpoints and
    ONNX graphs are unchanged).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class HintonMLP(TappedModel):
    """784-H-H-10 ReLU MLP. Teacher: H=1200, dropout 0.2 input / 0.5 hidden. Student: H=800, none."""

    def __init__(self, hidden: int = 1200, input_dropout: float = 0.0, hidden_dropout: float = 0.0,
                 in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), RandDropout(input_dropout),
            nn.Linear(in_features, hidden), nn.ReLU(), RandDropout(hidden_dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), RandDropout(hidden_dropout),
        )
        self.classifier = nn.Sequential(nn.Linear(hidden, num_classes))


class BlogCNN(TappedModel):
    """The reproduction's small MNIST CNN (44 errors after 100 epochs in the blog)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, padding=4), nn.ReLU(),  # 28 -> 32
            nn.Conv2d(8, 16, 5, stride=2),  # 32 -> 14
            nn.MaxPool2d(2), nn.ReLU(),  # 14 -> 7: 16*7*7 = 784
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.25), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )


class DeepNN(TappedModel):
    """The tutorial's CIFAR-10 teacher: 1,186,986 parameters; features 32x8x8 = 2048."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(2048, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, num_classes))


class LightNN(TappedModel):
    """The tutorial's CIFAR-10 student: 267,738 parameters; features 16x8x8 = 1024."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, num_classes))


class HintRegressor(nn.Module):
    """FitNets-style regressor: maps the student's feature map onto the teacher's channels.

    Training-only: it lives beside the student, never inside it, so exports do not carry it.
    """

    def __init__(self, in_channels: int = 16, out_channels: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.conv(feature_map)


ARCHITECTURES: dict[str, type[TappedModel]] = {
    "hinton_mlp": HintonMLP,
    "blog_cnn": BlogCNN,
    "deep_nn": DeepNN,
    "light_nn": LightNN,
}


def build_model(arch: str, **kwargs: Any) -> TappedModel:
    """Architecture name + constructor arguments -> module (how checkpoints rebuild models)."""
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: TappedModel, input_shape: tuple[int, ...]) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass on one sample, from Linear/Conv2d layers."""
    flops = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            flops += 2 * k * output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return flops
