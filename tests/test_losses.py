"""kdverify's losses against reference formulas written out here, independently."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdverify.train.losses import cosine_loss, hint_loss, kd_loss, pool_to_width, soft_target_kl


def tutorial_soft_loss(student, teacher, T):
    """The tutorial's form: sum(p * (log p - log q)) / batch * T^2."""
    p = torch.softmax(teacher / T, dim=-1)
    log_q = torch.log_softmax(student / T, dim=-1)
    return torch.sum(p * (p.log() - log_q)) / student.shape[0] * T**2


def blog_soft_loss(student, teacher, T):
    """The blog's form: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) * T^2."""
    return torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(student / T, 1), F.softmax(teacher / T, 1)) * T**2


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
def test_soft_term_matches_both_reference_forms(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 10, generator=g) * 3, torch.randn(64, 10, generator=g) * 3
    torch.testing.assert_close(soft_target_kl(s, t, T), tutorial_soft_loss(s, t, T))
    torch.testing.assert_close(soft_target_kl(s, t, T), blog_soft_loss(s, t, T))


def test_soft_term_is_kl_summed_over_classes_averaged_over_examples_times_t_squared():
    """Worked by hand: teacher p = (3/4, 1/4), student q = (1/2, 1/2), so KL(p || q) = 3/4 ln 3/2 + 1/4 ln 1/2.
    A class both give no mass adds nothing (a sum over classes, not a mean: 'mean' reduction would divide by
    the class count), an example the student already matches halves a batch of two (batchmean), and the same
    distributions at T = 2 give T^2 = 4 times the value."""
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert soft_target_kl(student, teacher, 1.0).item() == pytest.approx(kl, rel=1e-6)
    third = torch.tensor([[-60.0]])
    assert soft_target_kl(torch.cat([student, third], 1), torch.cat([teacher, third], 1), 1.0).item() == \
        pytest.approx(kl, rel=1e-6)
    assert soft_target_kl(torch.cat([student, teacher]), torch.cat([teacher, teacher]), 1.0).item() == \
        pytest.approx(kl / 2, rel=1e-6)
    assert soft_target_kl(student, 2 * teacher, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)


def test_kd_mixes_soft_and_hard_terms():
    s, t, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    expected = 0.7 * tutorial_soft_loss(s, t, 20.0) + 0.3 * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, y, 20.0, 0.7), expected)
    torch.testing.assert_close(kd_loss(s, t, y, 3.0, 0.0), F.cross_entropy(s, y))


def test_t_squared_keeps_soft_gradients_comparable_across_temperatures():
    """Hinton section 2: with the T^2 factor the soft-target gradient does not vanish at high T."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(256, 10, generator=g)
    norms = {}
    for T in (4.0, 20.0):
        s = torch.randn(256, 10, generator=torch.Generator().manual_seed(2)).requires_grad_()
        soft_target_kl(s, t, T).backward()
        norms[T] = s.grad.norm().item()
    # gradient ~ (q - p) / T * T^2 / B with (q - p) ~ 1/T: the ratio stays near 1, not 1/T^2 = 1/25
    assert 0.3 < norms[20.0] / norms[4.0] < 3


def test_stable_for_large_logits_and_high_temperature():
    s = torch.tensor([[1000.0, -1000.0, 0.0], [-1e3, 1e3, 5.0]], requires_grad=True)
    t = torch.tensor([[-1000.0, 1000.0, 0.0], [1e3, -1e3, 5.0]])
    for T in (1.0, 20.0):
        loss = kd_loss(s, t, torch.tensor([0, 1]), T, 0.5)
        loss.backward()
        assert math.isfinite(loss.item()) and torch.isfinite(s.grad).all()
    assert soft_target_kl(t, t, 20.0).abs().item() < 1e-6


def test_cosine_loss_equals_cosine_embedding_loss_with_pooling():
    student, teacher = torch.randn(8, 1024), torch.randn(8, 2048)
    pooled = F.avg_pool1d(teacher.unsqueeze(1), 2).squeeze(1)
    reference = torch.nn.CosineEmbeddingLoss()(student, pooled, torch.ones(8))
    torch.testing.assert_close(cosine_loss(student, teacher), reference)
    torch.testing.assert_close(pool_to_width(teacher, 1024), pooled)
    odd = torch.randn(2, 1000)  # not a multiple: adaptive pooling, any widths (a user's own pair)
    torch.testing.assert_close(pool_to_width(odd, 768), F.adaptive_avg_pool1d(odd.unsqueeze(1), 768).squeeze(1))
    assert pool_to_width(torch.randn(2, 100), 256).shape == (2, 256)
    assert torch.isfinite(cosine_loss(torch.randn(4, 96), torch.randn(4, 1000)))


def test_hint_loss_is_mse_and_registry():
    a, b = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(hint_loss(a, b), ((a - b) ** 2).mean())
    from kdverify.train.objectives import OBJECTIVES

    assert {"ce", "kd", "cosine", "hint"} <= set(OBJECTIVES)  # users may register more
