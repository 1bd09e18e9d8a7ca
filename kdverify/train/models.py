"""The architectures of the two reference works, one class each, with feature taps.

Every model is `features` (a feature map, or the last hidden layer for MLPs) followed by
`classifier`. `forward_taps` returns the logits together with the flattened hidden
representation and the feature map, so cosine and hint distillation need no copied
`Modified*` variants of a model.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from kdverify.registry import Registry


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
    """Inverted dropout whose mask is cut from packed random bits.

    `nn.Dropout` (`bernoulli_`) and `torch.rand` draw one Mersenne-Twister number per element. On
    2 CPU cores the Hinton teacher's three masks cost 25% (`bernoulli_`), then 10% (`rand`,
    0.54 ms per 128x1200 mask) of its training step. Here one 64-bit draw serves 64 elements at
    p = 0.5 (b bits per element when p * 2**b is an integer, b <= 8, expanded through a 256-row
    lookup table: 0.07 ms per mask) and 4 elements otherwise (16 bits each, so p is rounded to a
    multiple of 2**-16, e.g. 0.2 -> 0.199997). Same expectation and scaling as `nn.Dropout`,
    identity in eval mode, no parameters or buffers (checkpoints and ONNX graphs are unchanged).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * dropout_mask(x.shape, self.p, x.device, x.dtype)


def _mask_bits(p: float) -> int:
    """Bits of randomness per element: the fewest b in 1, 2, 4, 8 with p * 2**b exact, else 16."""
    return next((b for b in (1, 2, 4, 8) if (p * 2 ** b).is_integer()), 16)


@functools.lru_cache(maxsize=16)
def _mask_table(p: float, bits: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 8 // bits): the scaled keep values of the 8 // bits fields of every byte value."""
    fields = (torch.arange(256)[:, None] >> torch.arange(0, 8, bits)) & (2 ** bits - 1)
    return ((fields >= round(p * 2 ** bits)).double() * _keep_scale(p)).to(device, dtype)


def _keep_scale(p: float) -> float:
    return 0.0 if p >= 1 else 1.0 / (1.0 - p)


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A dropout mask of `shape`: 0 with probability p, else 1 / (1 - p); from the global torch RNG."""
    device = torch.device(device or "cpu")
    n, bits = math.prod(shape), _mask_bits(p)
    words = torch.empty(math.ceil(n * bits / 64), dtype=torch.int64, device=device).random_(-2 ** 63, None)
    if bits == 16:
        keep = words.view(torch.int16)[:n] >= round(p * 2 ** 16) - 2 ** 15  # uniform over [-2**15, 2**15)
        return keep.to(dtype).mul_(_keep_scale(p)).view(shape)
    table = _mask_table(p, bits, device, dtype)
    return table.index_select(0, words.view(torch.uint8).int()).view(-1)[:n].view(shape)


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


def _pooled(size: int | tuple[int, int], halvings: int) -> int:
    """Pixels left after `halvings` 2x2 max-pools of a square or (H, W) image."""
    h, w = (size, size) if isinstance(size, int) else size
    return (h >> halvings) * (w >> halvings)


class BlogCNN(TappedModel):
    """The reproduction's small MNIST CNN (44 errors after 100 epochs in the blog)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        side = lambda n: ((n + 8 - 5) - 5) // 2 + 1  # noqa: E731 - conv 5 pad 4, then conv 5 stride 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 5, padding=4), nn.ReLU(),  # 28 -> 32
            nn.Conv2d(8, 16, 5, stride=2),  # 32 -> 14
            nn.MaxPool2d(2), nn.ReLU(),  # 14 -> 7: 16*7*7 = 784
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.25), nn.Linear(16 * (side(h) // 2) * (side(w) // 2), 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )


class DeepNN(TappedModel):
    """The tutorial's CIFAR-10 teacher: 1,186,986 parameters; features 32x8x8 = 2048."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int | tuple[int, int] = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32 * _pooled(image_size, 2), 512), nn.ReLU(), nn.Dropout(0.1),
                                        nn.Linear(512, num_classes))


class LightNN(TappedModel):
    """The tutorial's CIFAR-10 student: 267,738 parameters; features 16x8x8 = 1024."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int | tuple[int, int] = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * _pooled(image_size, 2), 256), nn.ReLU(), nn.Dropout(0.1),
                                        nn.Linear(256, num_classes))


class HintRegressor(nn.Module):
    """FitNets-style regressor: maps the student's feature map onto the teacher's.

    Built from the two maps' shapes: a 3x3 convolution from the student's channels to the
    teacher's (then pooled to the teacher's height and width where they differ) for image maps,
    a linear layer for flat ones. Training-only: it lives beside the student, never inside it,
    so exports do not carry it.
    """

    def __init__(self, in_channels: int = 16, out_channels: int = 32,
                 out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(out_size) if out_size else nn.Identity()

    @classmethod
    def for_shapes(cls, student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
        """The regressor from a student feature map of shape `student` to a teacher one of shape `teacher`
        (both without the batch dimension)."""
        if len(student) == 3 and len(teacher) == 3:
            return cls(student[0], teacher[0], None if student[1:] == teacher[1:] else tuple(teacher[1:]))
        if len(student) == 1 and len(teacher) == 1:
            return nn.Linear(student[0], teacher[0])
        raise ValueError(f"no hint regressor from a feature map of shape {tuple(student)} to one of {tuple(teacher)}: "
                         "both must be (C, H, W) or both flat")

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(feature_map))


ARCHITECTURES: Registry[type[TappedModel]] = Registry(
    "architecture", "kdverify.models",
    "register it with kdverify.train.models.register_model in a module you --import, or install the package that "
    "provides it")


def register_model(name: str, factory: Callable[..., TappedModel], replace: bool = False) -> Callable[..., TappedModel]:
    """Make `name` buildable (recipes and checkpoints name architectures by it). `factory(**kwargs)` returns
    a TappedModel; the keyword arguments it accepts among `num_classes`, `in_channels`, `in_features`,
    `image_size` and `input_shape` are filled from the dataset when a recipe does not set them."""
    return ARCHITECTURES.register(name, factory, replace=replace)


for _name, _cls in (("hinton_mlp", HintonMLP), ("blog_cnn", BlogCNN), ("deep_nn", DeepNN), ("light_nn", LightNN)):
    register_model(_name, _cls)


def shape_kwargs(arch: str, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The data-shape arguments `arch`'s constructor accepts, from the data: classes, channels, pixels."""
    accepted = inspect.signature(ARCHITECTURES.lookup(arch)).parameters
    shape = tuple(int(d) for d in input_shape)
    known = {"num_classes": num_classes, "in_channels": shape[0], "in_features": math.prod(shape),
             "image_size": shape[1:] if len(shape) == 3 else None, "input_shape": shape}
    return {k: v for k, v in known.items() if k in accepted and v is not None}


def build_model(arch: str, **kwargs: Any) -> TappedModel:
    """Architecture name + constructor arguments -> module (how checkpoints rebuild models)."""
    return ARCHITECTURES.lookup(arch)(**kwargs)


def preferred_memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last for conv nets: oneDNN's direct convolutions skip a layout reorder per layer
    (DeepNN training step at batch 128 on 2 CPU cores: 1219 -> 979 ms)."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if has_conv else torch.contiguous_format


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
