"""Distillation losses (the objectives that use them are registered by name in `kdverify.train.objectives`).

Reduction conventions (tested against reference formulas in tests/test_losses.py):
- KL is summed over classes and averaged over the batch ("batchmean"). This equals the
  tutorial's `sum(p * (log p - log q)) / batch * T^2`. `KLDivLoss(reduction="mean")` (a common
  mistake) would also divide by the number of classes, shrinking the soft term 10x.
- The soft term is multiplied by T^2 (Hinton et al. section 2): soft-target gradients scale as
  1/T^2, so without it the soft term would vanish next to the hard term at T=20.
- Every probability comes from log_softmax, so T=20 and logits of magnitude 1e3 stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, summed over classes, mean over batch."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, soft_weight: float) -> torch.Tensor:
    """soft_weight * T^2 * KL(soft teacher || soft student) + (1 - soft_weight) * CE(hard labels)."""
    hard = F.cross_entropy(student_logits, labels) if soft_weight < 1 else student_logits.new_zeros(())
    return soft_weight * soft_target_kl(student_logits, teacher_logits, temperature) + (1 - soft_weight) * hard


def pool_to_width(features: torch.Tensor, width: int) -> torch.Tensor:
    """Average-pool flattened features (B, D) to (B, width), whatever D and width are.

    D a multiple of width: means of consecutive groups of D / width (the tutorial's avg_pool1d);
    otherwise adaptive average pooling (overlapping windows; it repeats features when D < width).
    """
    d = features.shape[1]
    if d == width:
        return features
    if d % width == 0:
        return features.view(features.shape[0], width, d // width).mean(dim=2)
    return F.adaptive_avg_pool1d(features.unsqueeze(1), width).squeeze(1)


def cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """1 - cos(student, teacher pooled to the student's width), mean over batch.

    Equals CosineEmbeddingLoss with target +1 (the tutorial's choice).
    """
    teacher = pool_to_width(teacher_hidden, student_hidden.shape[1])
    return (1 - F.cosine_similarity(student_hidden, teacher, dim=1)).mean()


def hint_loss(regressed_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """FitNets hint: mean squared error between the regressed student map and the teacher map."""
    return F.mse_loss(regressed_map, teacher_map)
