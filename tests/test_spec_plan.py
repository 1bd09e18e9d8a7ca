"""One resolver from a recipe name to a model, and the plan of a run built from it."""

import pytest

from kdverify.cache.spec import entry_pattern, resolve
from kdverify.claims.core import Claim, Threshold
from kdverify.claims.paper import CLAIMS, CLAIMS_BY_ID
from kdverify.claims.plan import claim_specs, format_plan, make_plan
from kdverify.errors import KdverifyError


def test_a_pinned_teacher_never_moves_and_trains_nothing():
    for offset, student_offset in ((0, 0), (3, 0), (0, 4)):
        spec = resolve("hinton-teacher", "ci", offset=offset, student_offset=student_offset)
        assert spec.pinned and spec.seed == 0 and spec.teacher is None


def test_offsets_move_students_and_teachers_by_their_own_rules():
    student = resolve("hinton-student-kd", "paper", offset=2, student_offset=5)
    assert student.seed == 7  # both offsets
    assert student.teacher.name == "hinton-teacher" and student.teacher.seed == 2  # the sample's offset is not its
    assert not student.teacher.pinned
    assert resolve("hinton-teacher", "paper", student_offset=5).seed == 0  # asked for directly: still fixed
    ci = resolve("hinton-student-kd", "ci", seed=10, student_offset=1)
    assert ci.seed == 11 and ci.teacher.pinned
    assert [s.name for s in ci.lineage()] == ["hinton-teacher", "hinton-student-kd"]


def test_a_teacher_on_other_data_is_refused_when_resolved(tiny_registered):
    import dataclasses

    from kdverify.train.recipes import get_recipe, register_recipe

    register_recipe(dataclasses.replace(get_recipe("tiny-kd-0", "paper"), name="tiny-kd-other-data",
                                        teacher="hinton-teacher"))  # the fixture removes it again
    with pytest.raises(KdverifyError, match="distils on 'tiny' from hinton-teacher"):
        resolve("tiny-kd-other-data", "paper")


def test_keys_name_the_teacher_by_its_weights_and_file_names_are_matched_exactly():
    spec = resolve("hinton-student-kd", "ci")
    a = spec.key("mnist", "c", "4", "cpu", teacher_weights="aa")
    assert a != spec.key("mnist", "c", "4", "cpu", teacher_weights="bb")
    assert a != spec.key("mnist", "c", "4", "cuda", teacher_weights="aa")
    with pytest.raises(ValueError, match="teacher's weights"):
        spec.key("mnist", "c", "4", "cpu")
    name = spec.file_name(a)
    assert entry_pattern("hinton-student-kd").match(name)
    assert not entry_pattern("hinton-student-kd").match(resolve("hinton-student-kd-no3", "ci").file_name(a))


def test_the_ci_plan_lists_each_model_once_teachers_first():
    plan = make_plan(CLAIMS, "ci")
    seen = set()
    for item in plan:
        if item.spec.teacher is not None:
            assert (item.spec.teacher.name, item.spec.teacher.seed) in seen  # its teacher came earlier
        seen.add((item.spec.name, item.spec.seed))
    assert len(seen) == len(plan)
    lightnn = sorted(i.spec.seed for i in plan if i.spec.name == "tutorial-lightnn")
    assert lightnn == [42, 43, 44]  # the mean-of-3 claims average three student seeds
    hard = next(i for i in plan if i.spec.name == "hinton-student-hard")
    assert hard.claims == ["hinton.student_hard", "hinton.kd_vs_hard"]
    assert "models" in format_plan(plan, "ci")


def test_a_sample_of_seeds_moves_students_only():
    specs = claim_specs(CLAIMS_BY_ID["hinton.student_kd"], "paper", seeds=3)
    assert sorted((s.name, s.seed) for s in specs) == [("hinton-student-kd", 0), ("hinton-student-kd", 1),
                                                       ("hinton-student-kd", 2), ("hinton-teacher", 0)]
    teacher_only = claim_specs(CLAIMS_BY_ID["hinton.teacher"], "paper", seeds=3)
    assert [(s.name, s.seed) for s in teacher_only] == [("hinton-teacher", 0)]


def test_the_plan_names_exactly_the_models_a_run_asks_for(tmp_path, tiny_registered):
    """The plan is derived from claims as data; a real run on tiny recipes touches the same models."""
    from kdverify.claims.lab import ClaimsLab

    claims = [
        Claim("t.kd", "test", "kd student", "errors_on_test", {"recipe": "tiny-kd-1"}, None, "errors",
              Threshold("<=", 10_000)),
        Claim("t.gain", "test", "mean gain", "mean_accuracy_gain",
              {"recipe": "tiny-kd-0", "baseline": "tiny-hard", "seeds": 2}, None, "pt", Threshold(">=", -100)),
    ]
    lab = ClaimsLab(None, "paper", "cpu", tmp_path, progress=None)
    for seeds in (1, 2):
        planned = {(i.spec.name, i.spec.seed) for i in make_plan(claims, "paper", seeds)}
        touched = set()
        for claim in claims:
            lab.check(claim, seeds)
            touched |= {(m.recipe.name, m.recipe.seed) for m in lab.cache._memory.values()}
        assert touched == planned
        lab.cache._memory.clear()
