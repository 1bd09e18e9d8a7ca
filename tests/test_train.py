import copy
import dataclasses
import weakref

import pytest
import torch
import torch.nn.functional as F

from conftest import make_pattern_split
from kdverify.data import CIFAR_CLASSES, CIFAR_NORM, Dataset, Split, normalize
from kdverify.train import loop as train_module
from kdverify.train.loop import TrainingRun, fit, lr_factor, transfer_indices, transfer_split
from kdverify.train.losses import pool_to_width
from kdverify.train.metrics import Evaluation, predict_logits, search_bias_shift, shift_bias, shift_logits
from kdverify.train.models import DeepNN, build_model
from kdverify.train.recipes import BUDGETS, RECIPES, Recipe, get_recipe

TINY = {"arch_kwargs": {"hidden": 64}, "epochs": 3, "lr": 0.05, "momentum": 0.9, "batch_size": 100}


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
    recipe = tiny(augment="jitter2", arch_kwargs={"hidden": 32, "input_dropout": 0.2, "hidden_dropout": 0.5}, epochs=1)
    a, b = (fit(recipe, tiny_mnist, progress=None).model for _ in range(2))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = fit(recipe.with_seed(1), tiny_mnist, progress=None).model
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def _permuted(dataset: Dataset) -> Dataset:
    """The same images with every label moved to the next class: a teacher trained on it disagrees
    with the true labels everywhere, so a student can only learn its mapping from the teacher."""
    def relabel(s: Split) -> Split:
        return Split(s.images, (s.labels + 1) % 10)

    return dataclasses.replace(dataset, checksum="permuted", train=relabel(dataset.train), test=relabel(dataset.test))


def _agreement(a, b, dataset: Dataset) -> float:
    la, lb = (predict_logits(m, dataset.test, dataset.mean, dataset.std).argmax(1) for m in (a, b))
    return float((la == lb).float().mean())


def test_kd_student_learns_the_teacher_not_the_labels(tiny_mnist):
    """Pure soft targets (soft_weight 1.0): the student must follow the teacher's (permuted) classes; with
    a teacher whose logits are all zero (no signal) it must not."""
    teacher = fit(tiny("teacher"), _permuted(tiny_mnist), progress=None).model
    taught = predict_logits(teacher, tiny_mnist.test, tiny_mnist.mean, tiny_mnist.std).argmax(1)
    assert float((taught == (tiny_mnist.test.labels + 1) % 10).float().mean()) > 0.95
    kd = tiny("student", objective="kd", teacher="teacher", temperature=2.0, soft_weight=1.0, lr=0.01,
              arch_kwargs={"hidden": 32})
    student = fit(kd, tiny_mnist, teacher=teacher, progress=None)
    assert _agreement(student.model, teacher, tiny_mnist) > 0.9
    assert student.evaluation.error_rate > 0.9, "the hard labels (which disagree with the teacher) were not used"
    silent = copy.deepcopy(teacher)
    with torch.no_grad():
        silent.output_layer.weight.zero_()
        silent.output_layer.bias.zero_()
    control = fit(kd, tiny_mnist, teacher=silent, progress=None)
    assert _agreement(control.model, teacher, tiny_mnist) < 0.3


def test_cosine_student_aligns_its_hidden_layer_with_the_teacher(tiny_mnist):
    teacher = fit(tiny("teacher"), tiny_mnist, progress=None).model  # hidden 64, pooled to the student's 32

    def similarity(model) -> float:
        x = normalize(tiny_mnist.test.images, tiny_mnist.mean, tiny_mnist.std)
        with torch.no_grad():
            s, t = model.eval().forward_taps(x).hidden, teacher.eval().forward_taps(x).hidden
        return float(F.cosine_similarity(s, pool_to_width(t, s.shape[1]), dim=1).mean())

    small = {"arch_kwargs": {"hidden": 32}, "lr": 0.05}
    ce = fit(tiny("student", **small), tiny_mnist, progress=None).model
    cosine = fit(tiny("student", objective="cosine", teacher="teacher", soft_weight=0.5, **small), tiny_mnist,
                 teacher=teacher, progress=None)
    # measured: CE alone 0.55 (0.61 at lr 0.01), cosine 0.83
    assert similarity(cosine.model) > similarity(ce) + 0.15
    assert cosine.evaluation.errors < 25  # and the CE half still classifies
    assert all(p.requires_grad is False for p in teacher.parameters())


def _tiny_cifar(n_train=100):
    return Dataset("cifar10", "synthetic", "s", CIFAR_CLASSES, *CIFAR_NORM,
                   make_pattern_split(n_train, 0, channels=3, size=32), make_pattern_split(50, 1, channels=3, size=32))


def _train_steps(recipe: Recipe, dataset: Dataset, teacher=None, epochs: int = 2) -> TrainingRun:
    run = TrainingRun(recipe, dataset, teacher)
    torch.manual_seed(123)  # the same dropout masks in every run (a hint run also drew its regressor's init)
    for epoch in range(epochs):
        for index, images, labels in run.batches():
            run.step(epoch, index, images, labels)
    return run


def test_hint_term_moves_the_student_and_trains_the_regressor():
    """LightNN + FitNets regressor against a DeepNN. Plain SGD: if the hint term contributed nothing, the
    hint run (CE weighted 1 - w at lr) would equal a CE run at lr * (1 - w) up to rounding."""
    dataset, w, lr = _tiny_cifar(), 0.5, 0.05
    torch.manual_seed(7)
    teacher = DeepNN().eval()
    base = {"epochs": 1, "optimizer": "sgd", "batch_size": 50}
    hint = _train_steps(Recipe("h", "cifar10", "light_nn", lr=lr, objective="hint", teacher="t", soft_weight=w,
                               **base), dataset, teacher)
    ce = _train_steps(Recipe("c", "cifar10", "light_nn", lr=lr * (1 - w), **base), dataset)
    moved = max(float((a - b).abs().max()) for a, b in zip(hint.model.state_dict().values(),
                                                            ce.model.state_dict().values()))
    # measured 1.3e-3; without the hint term the two runs are bit-identical (w = 0.5 scales exactly)
    assert moved > 1e-4, f"the hint term left the student's weights where CE alone puts them (max diff {moved:.1e})"
    grad = hint.adapter.conv.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert not any("regressor" in k or k.startswith("conv") for k in hint.model.state_dict())


def test_teacher_table_gives_the_weights_of_the_teacher_in_the_loop_and_is_computed_once(tiny_mnist, monkeypatch):
    """KD with jitter2 (25 variants, 25 epochs): teacher outputs looked up in the table computed once must
    train the same student as running the teacher on every batch; a second student reuses the table."""
    dataset = dataclasses.replace(tiny_mnist, checksum="first-200", train=tiny_mnist.train.take(torch.arange(200)))
    teacher = fit(tiny("teacher", arch_kwargs={"hidden": 48}), dataset, progress=None).model
    other = copy.deepcopy(teacher)  # a different signal: the same teacher with its logits negated
    with torch.no_grad():
        other.output_layer.weight.neg_()
        other.output_layer.bias.neg_()
    calls = {"forward": 0, "table": 0}
    real_forward, real_table = teacher.forward_taps, train_module.teacher_table

    def counting_forward(x):
        calls["forward"] += 1
        return real_forward(x)

    def counting_table(*args, **kwargs):
        calls["table"] += 1
        return real_table(*args, **kwargs)

    monkeypatch.setattr(teacher, "forward_taps", counting_forward)
    monkeypatch.setattr(train_module, "teacher_table", counting_table)
    monkeypatch.setattr(train_module, "_TEACHER_TABLES", weakref.WeakKeyDictionary())
    student = tiny("student", objective="kd", teacher="teacher", temperature=4.0, soft_weight=0.7, lr=0.01,
                   augment="jitter2", epochs=25, arch_kwargs={"hidden": 32})
    steps = 25 * 2  # 200 images, batches of 100

    cached = fit(student, dataset, teacher=teacher, progress=None).model
    assert calls == {"forward": 1 + 25, "table": 1}  # a shape probe, then one pass per variant; none while training
    memo = train_module._TEACHER_TABLES[teacher]
    # one pass fills every tap that fits: logits, and the hidden layer (small here) for cosine/hint students
    assert sorted(memo) == [(tap, "jitter2", dataset.variant, dataset.checksum) for tap in ("hidden", "logits")]
    assert memo[("logits", "jitter2", dataset.variant, dataset.checksum)].shape == (25, 200, 10)

    fit(student.with_seed(1), dataset, teacher=teacher, progress=None)
    assert calls == {"forward": 1 + 25 + 1, "table": 1}  # the second student only probes the shape

    monkeypatch.setattr(train_module, "TEACHER_TABLE_BYTES", 0)
    monkeypatch.setattr(train_module, "_TEACHER_TABLES", weakref.WeakKeyDictionary())
    calls.update(forward=0, table=0)
    in_loop = fit(student, dataset, teacher=teacher, progress=None).model
    assert calls == {"forward": 1 + steps, "table": 0}
    for (name, a), b in zip(cached.named_parameters(), in_loop.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    # ...and the teacher signal matters: another teacher's outputs give other weights
    elsewhere = fit(student, dataset, teacher=other, progress=None).model
    assert float((cached.output_layer.weight - elsewhere.output_layer.weight).detach().abs().max()) > 1e-2


def test_missing_teacher_and_empty_transfer_set(tiny_mnist):
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(tiny(objective="kd", teacher="x", temperature=2, soft_weight=0.5), tiny_mnist, progress=None)
    with pytest.raises(ValueError, match="empty"):
        fit(tiny(keep_classes=(3,), drop_classes=(3,)), tiny_mnist, progress=None)


def test_transfer_split_holds_out_before_filtering(tiny_mnist):
    recipe = tiny(drop_classes=(3,), holdout=300)
    train, held = transfer_split(recipe, tiny_mnist)
    assert 3 not in train.labels.tolist() and 3 in held.labels.tolist()
    threes_dropped = int((tiny_mnist.train.labels[:-300] == 3).sum())
    assert len(held) == 300 and len(train) == len(tiny_mnist.train) - 300 - threes_dropped
    # the indices (what teacher tables are looked up by) point at exactly those examples of the whole split
    train_index, held_index = transfer_indices(recipe, tiny_mnist)
    assert torch.equal(tiny_mnist.train.images[train_index], train.images)
    assert torch.equal(tiny_mnist.train.labels[held_index], held.labels)
    assert held_index.tolist() == list(range(len(tiny_mnist.train) - 300, len(tiny_mnist.train)))


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
    for name, kinds in RECIPES.items():
        assert set(kinds) == {"original", "fast"}
        for kind, recipe in kinds.items():
            assert recipe.name == name
            if recipe.teacher:
                assert recipe.teacher in RECIPES and RECIPES[recipe.teacher][kind].dataset == recipe.dataset
    for budget, kind in (("ci", "fast"), ("paper", "fast"), ("original", "original")):
        assert budget in BUDGETS and get_recipe("hinton-student-kd", budget) is RECIPES["hinton-student-kd"][kind]
    assert get_recipe("hinton-teacher", "original").epochs == 1000
    assert get_recipe("tutorial-lightnn-kd", "original").temperature == 2.0
    with pytest.raises(KeyError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(KeyError, match="unknown budget"):
        get_recipe("hinton-teacher", "weekend")


def test_recipe_round_trip_and_fingerprint():
    r = get_recipe("hinton-student-kd-no3", "original")
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


def test_shipped_teachers_match_their_fast_recipes():
    """A recipe change (or a new Recipe field) that alters a pinned teacher's fingerprint must re-pin it."""
    from kdverify.cache.manifest import read_manifest
    from kdverify.train.recipes import get_recipe

    manifest = read_manifest()
    assert set(manifest) == {"hinton-teacher", "tutorial-deepnn"}
    for name, entry in manifest.items():
        assert get_recipe(name, "ci").fingerprint() == entry["fingerprint"], name


_FRESH_PROCESS_FIT = """
import sys, torch
sys.path.insert(0, {root!r})
from conftest import make_pattern_split
from kdverify.cache.checkpoint import state_digest
from kdverify.data import CIFAR_CLASSES, CIFAR_NORM, Dataset
from kdverify.train.models import build_model
from kdverify.train.recipes import Recipe
from kdverify.train.loop import fit
# the tutorial's teacher and student on 16x16 images: every layer, kernel and the hint regressor, 1/4 of the work
dataset = Dataset("cifar10", "synthetic", "tiny", CIFAR_CLASSES, *CIFAR_NORM,
                  make_pattern_split(256, 0, channels=3, size=16), make_pattern_split(64, 1, channels=3, size=16))
torch.manual_seed(7)
teacher = build_model("deep_nn", image_size=16)
student = Recipe("s", "cifar10", "light_nn", epochs=2, lr=2e-3, optimizer="adam", objective="hint", teacher="t",
                 soft_weight=0.25, schedule="linear", warmup_epochs=0.5, augment="flip", batch_size=64, seed=42,
                 arch_kwargs=dict(image_size=16))
print(state_digest(fit(student, dataset, teacher=teacher, progress=None).model))
"""


@pytest.mark.processes
def test_a_cifar_student_gets_identical_weights_in_a_fresh_process():
    """The same recipe gives bit-identical weights here (inside pytest, after other tests trained) and in a
    fresh interpreter: nothing process-wide (RNG state, teacher tables, allocator, threads) leaks into training."""
    import pathlib
    import subprocess
    import sys

    root = str(pathlib.Path(__file__).resolve().parent.parent)
    source = _FRESH_PROCESS_FIT.format(root=root)
    torch.manual_seed(123)  # disturb the global RNG first: training must not depend on it
    here = {}
    exec(compile(source.replace("print(", "here['digest'] = ("), "<fit>", "exec"), {"here": here})  # noqa: S102
    fresh = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True, cwd=root)
    assert fresh.stdout.strip() == here["digest"]




_DENORMALS = """
import torch
from kdverify.train.denormals import flush_denormals

tiny = torch.tensor([1e-40]).expand(4_000_000)  # denormal, no parallel op yet; the product below is split over threads
supported = flush_denormals()
print(supported, int(((tiny * 1.5) != 0).sum()), torch.get_num_threads())
"""


@pytest.mark.processes
def test_flushed_denormals_reach_every_thread_torch_starts_after_the_call():
    """torch.set_flush_denormal sets the calling thread's mode and threads started later inherit it (a pool already
    running would keep its own, half the product below would stay denormal): so kdverify flushes before the first
    parallel op, and in a fresh process every thread flushes."""
    import os
    import subprocess
    import sys

    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the flush-to-zero mode checked here is x86's (MXCSR)")
    out = subprocess.run([sys.executable, "-c", _DENORMALS], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout.split()
    assert out == ["True", "0", "2"]
