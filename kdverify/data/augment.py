"""Batched, on-device normalisation and augmentation: one gather per batch, no per-sample Python; every augmented
image is one of a finite set of variants, so a fixed teacher's outputs on all of them can be computed once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from kdverify.data.splits import Split, is_tabular


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32, (x/255 - mean) / std as one scale and one shift per channel; float features
    (B, D) -> (x - mean) / std per feature."""
    if images.ndim == 2:
        mean_f = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1)
        std_f = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1)
        return (images.float() - mean_f) / std_f
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    return torch.addcmul(-mean_t / std_t, images.float(), 1.0 / (255.0 * std_t))


def translate(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift image i by (dy[i], dx[i]) - max_shift pixels, zero fill: one gather over the padded batch.

    Equals torchvision's RandomAffine(translate) with integer shifts (or RandomCrop(padding))
    without a PIL image per sample.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    wp = w + 2 * max_shift
    window = (torch.arange(h, device=images.device)[:, None] * wp + torch.arange(w, device=images.device)).view(1, -1)
    index = (window + (dy * wp + dx)[:, None])[:, None, :].expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, index).view(b, c, h, w)


@dataclass(frozen=True)
class Augmentation:
    """A finite family of image variants (integer shifts, optional mirror), drawn per sample.

    Every augmented image is one of `variants` copies of its source, named by a variant id, so a
    fixed teacher's outputs on all of them can be computed once and looked up by (variant, index)
    instead of running the teacher on every batch of every epoch.
    """

    name: str
    max_shift: int = 0
    flip: bool = False

    @property
    def variants(self) -> int:
        return (2 * self.max_shift + 1) ** 2 * (2 if self.flip else 1)

    def draw(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Variant ids for a batch (int64, on the CPU): shifts first, then the mirror coin."""
        ids = torch.zeros(batch, dtype=torch.int64)
        if self.max_shift:
            shifts = torch.randint(0, 2 * self.max_shift + 1, (2, batch), generator=generator)
            ids = shifts[0] * (2 * self.max_shift + 1) + shifts[1]
        if self.flip:
            ids = ids * 2 + (torch.rand(batch, generator=generator) < 0.5).long()
        return ids

    def apply(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The variants `ids` of `images` (uint8 or float, (B, C, H, W)); tabular features only take `none`."""
        if images.ndim != 4 and (self.flip or self.max_shift):
            raise ValueError(f"augmentation {self.name!r} shifts or mirrors images; tabular features (N, D) take "
                             "augment = 'none'")
        ids, mirror = ids.to(images.device), None
        if self.flip:
            mirror, ids = ids % 2 == 1, ids // 2
        if self.max_shift:
            side = 2 * self.max_shift + 1
            images = translate(images, ids // side, ids % side, self.max_shift)
        if mirror is not None:
            images = torch.where(mirror[:, None, None, None], images.flip(3), images)
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], generator))


AUGMENTATIONS: dict[str, Augmentation] = {a.name: a for a in (
    Augmentation("none"),
    Augmentation("jitter2", max_shift=2),  # Hinton / blog MNIST: up to 2 px each way
    Augmentation("flip", flip=True),  # CIFAR mirror only: 2 variants, so a teacher's outputs can be cached
    Augmentation("crop4-flip", max_shift=4, flip=True),  # standard CIFAR: pad-4 crop + mirror
)}


def get_augmentation(kind: str) -> Augmentation:
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; known: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[kind]


def augment(images: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Named augmentations (see AUGMENTATIONS), batched on the images' device."""
    return get_augmentation(kind)(images, generator)


def random_raw_inputs(count: int, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Inputs like the data's, before `normalize`: uint8 pixels, or features around their mean (tabular)."""
    if is_tabular(input_shape):
        noise = torch.randn(count, *input_shape, generator=generator)
        return noise * torch.tensor(std).view(1, -1) + torch.tensor(mean).view(1, -1)
    return torch.randint(0, 256, (count, *input_shape), generator=generator, dtype=torch.uint8)


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (index, uint8 images, labels) batches of one epoch; the shuffle is one randperm."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield idx, split.images[idx], split.labels[idx]
