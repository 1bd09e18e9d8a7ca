import dataclasses

import pytest
import torch

from kdverify.models import build_model
from kdverify.recipes import RECIPES, Recipe, get_recipe
from kdverify.train import Evaluation, fit, lr_factor, predict_logits, search_bias_shift, shift_bias, shift_logits, \
    transfer_split

TINY = dict(arch_kwargs=dict(hidden=64), epochs=3, lr=0.05, momentum=0.9, batch_size=100)


def tiny(name="tiny", **changes) -> Recipe:
    return dataclasses.replace(Recipe(name, "mnist", "hinton_mlp", **TINY), **changes)


def test_training_learns_and_reports_history(tiny_mnist):
    result = fit(tiny(), tiny_mnist, progress=None)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.history[-1].loss < result.history[0].loss
    assert result.evaluation.total == 500
    assert result.evaluation.errors < 25, "a learnable synthetic task should be nearly solved"
    assert result.evaluation.confusion.shape == (10, 10)


def test_same_seed_same_weights_on_cpu(tiny_mnist):
    recipe = tiny(augment="jitter2", arch_kwargs=dict(hidden=32, input_dropout=0.2, hidden_dropout=0.5), epochs=1)
    a, b = (fit(recipe, tiny_mnist, progress=None).model for _ in range(2))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = fit(recipe.with_seed(1), tiny_mnist, progress=None).model
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize("objective,arch,kwargs", [
    ("kd", "hinton_mlp", dict(temperature=4.0, soft_weight=0.7, arch_kwargs=dict(hidden=32))),
    ("kd", "hinton_mlp", dict(temperature=4.0, soft_weight=0.7, augment="jitter2", arch_kwargs=dict(hidden=32))),
    ("cosine", "hinton_mlp", dict(soft_weight=0.25, arch_kwargs=dict(hidden=32))),
])
def test_distillation_objectives_train(tiny_mnist, objective, arch, kwargs):
    teacher = fit(tiny(), tiny_mnist, progress=None).model
    student = fit(tiny("student", objective=objective, teacher="tiny", lr=0.01, **kwargs), tiny_mnist,
                  teacher=teacher, progress=None)
    assert student.evaluation.errors < 50
    assert all(p.requires_grad is False for p in teacher.parameters())


def test_hint_objective_on_the_tutorial_pair():
    """Hint needs conv feature maps: LightNN + regressor against a DeepNN on tiny CIFAR-shaped data."""
    from conftest import make_pattern_split
    from kdverify.data import CIFAR_CLASSES, CIFAR_NORM, Dataset
    from kdverify.models import DeepNN

    ds = Dataset("cifar10", "synthetic", "s", CIFAR_CLASSES, *CIFAR_NORM,
                 make_pattern_split(200, 0, channels=3, size=32), make_pattern_split(100, 1, channels=3, size=32))
    recipe = Recipe("h", "cifar10", "light_nn", epochs=1, lr=1e-3, optimizer="adam", objective="hint",
                    teacher="t", soft_weight=0.25, batch_size=50)
    result = fit(recipe, ds, teacher=DeepNN().eval(), progress=None)
    assert not any("regressor" in k or k.startswith("conv") for k in result.model.state_dict())


def test_missing_teacher_and_empty_transfer_set(tiny_mnist):
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(tiny(objective="kd", teacher="x", temperature=2, soft_weight=0.5), tiny_mnist, progress=None)
    with pytest.raises(ValueError, match="empty"):
        fit(tiny(keep_classes=(3,), drop_classes=(3,)), tiny_mnist, progress=None)


def test_transfer_split_holds_out_before_filtering(tiny_mnist):
    train, held = transfer_split(tiny(drop_classes=(3,), holdout=300), tiny_mnist)
    assert 3 not in train.labels.tolist() and 3 in held.labels.tolist()
    threes_dropped = int((tiny_mnist.train.labels[:-300] == 3).sum())
    assert len(held) == 300 and len(train) == len(tiny_mnist.train) - 300 - threes_dropped


def test_bias_shift_search_and_model_shift_agree(tiny_mnist):
    """A KD student that never saw a 3 learns 3-ness from soft targets; a bias shift brings it out."""
    teacher = fit(tiny(), tiny_mnist, progress=None).model
    result = fit(tiny("no3", objective="kd", teacher="tiny", temperature=8.0, soft_weight=0.9, lr=0.01,
                      drop_classes=(3,)), tiny_mnist, teacher=teacher, progress=None)
    logits = predict_logits(result.model, tiny_mnist.test, tiny_mnist.mean, tiny_mnist.std)
    before = Evaluation.from_logits(logits, tiny_mnist.test.labels)
    assert before.per_class_errors[3] > before.per_class_total[3] // 2, "a never-seen class is rarely predicted"
    delta, errors = search_bias_shift(logits, tiny_mnist.test.labels, [3])
    assert delta > 0 and errors < before.errors
    shift_bias(result.model, [3], delta)
    after = Evaluation.from_logits(predict_logits(result.model, tiny_mnist.test, tiny_mnist.mean, tiny_mnist.std),
                                   tiny_mnist.test.labels)
    assert after.errors == errors
    torch.testing.assert_close(shift_logits(logits, [3], delta)[:, 3], logits[:, 3] + delta)


def test_schedules():
    r = tiny(epochs=10, schedule="linear", warmup_epochs=1)
    assert lr_factor(r, 0.5) == pytest.approx(0.5) and lr_factor(r, 1) == pytest.approx(1)
    assert lr_factor(r, 10) == pytest.approx(0)
    step = tiny(epochs=300, schedule="step", step_every=100, step_gamma=0.5)
    assert [lr_factor(step, e) for e in (0, 99.9, 100, 250)] == [1, 1, 0.5, 0.25]
    assert lr_factor(tiny(schedule="cosine", epochs=4), 2) == pytest.approx(0.5)


def test_every_recipe_is_well_formed():
    for name, budgets in RECIPES.items():
        assert set(budgets) == {"ci", "paper"}
        for budget, recipe in budgets.items():
            assert recipe.name == name
            if recipe.teacher:
                assert recipe.teacher in RECIPES and get_recipe(recipe.teacher, budget).dataset == recipe.dataset
    assert get_recipe("hinton-teacher", "paper").epochs == 1000
    assert get_recipe("tutorial-lightnn-kd", "paper").temperature == 2.0
    with pytest.raises(KeyError, match="unknown recipe"):
        get_recipe("nope")


def test_recipe_round_trip_and_fingerprint():
    r = get_recipe("hinton-student-kd-no3", "paper")
    assert Recipe.from_dict(r.to_dict()) == r
    assert r.fingerprint() == Recipe.from_dict(r.to_dict()).fingerprint()
    assert r.fingerprint() != r.with_seed(5).fingerprint()
    assert r.fingerprint() == dataclasses.replace(r, note="other words").fingerprint()


def test_grad_clip_bounds_each_step(tiny_mnist):
    """A tiny clip norm keeps every SGD step (no momentum) within lr * clip of the start."""
    plain, clipped = tiny(momentum=0.0, epochs=1), tiny(momentum=0.0, epochs=1, grad_clip=1e-3)
    torch.manual_seed(plain.seed)  # fit() initialises the same way
    start = build_model(plain.arch, **plain.arch_kwargs).state_dict()
    moved = {}
    for name, recipe in (("plain", plain), ("clipped", clipped)):
        weights = fit(recipe, tiny_mnist, progress=None).model.state_dict()
        moved[name] = torch.sqrt(sum(((weights[k] - start[k]) ** 2).sum() for k in start)).item()
    steps = -(-len(tiny_mnist.train) // plain.batch_size)
    assert moved["clipped"] <= plain.lr * 1e-3 * steps * 1.0001
    assert moved["plain"] > 10 * moved["clipped"]
