import json

import torch

from kdverify.cache import Trained
from kdverify.claims import CLAIMS, CLAIMS_BY_ID, Threshold, Verdict, judge, Measurement
from kdverify.models import HintonMLP
from kdverify.recipes import get_recipe
from kdverify.report import table, write_report
from kdverify.train import EpochRecord, Evaluation


def _verdicts():
    claim = CLAIMS_BY_ID["hinton.student_kd"]
    return [Verdict(claim, "ci", 101, Threshold("<=", 120), "PASS", "of 10000", 12.3, "cpu", "mnist"),
            Verdict(CLAIMS_BY_ID["tutorial.kd"], "ci", 48.2, Threshold(">=", 50), "FAIL", "", 3, "cpu",
                    "cifar10-jpeg-q75")]


def test_table_has_every_column_and_row():
    text = table(_verdicts())
    lines = text.splitlines()
    assert lines[0].split() == ["claim", "paper", "measured", "threshold", "verdict", "seconds", "device", "data"]
    assert lines[2].split()[:5] == ["hinton.student_kd", "74", "101", "<=", "120"]
    assert "FAIL" in lines[3] and "cifar10-jpeg-q75" in lines[3]


def test_report_files_say_what_budget_and_data_mean(tmp_path):
    confusion = torch.eye(10, dtype=torch.int64) * 990
    confusion[3, 5] = 7
    model = Trained(HintonMLP(16), get_recipe("hinton-student-kd"), "k", Evaluation(confusion),
                    [EpochRecord(1, 0.5, 20, 1.0), EpochRecord(2, 0.3, 7, 1.0)])
    written = write_report(tmp_path, _verdicts(), [model])
    md = (tmp_path / "report.md").read_text()
    assert "JPEG q75 stand-in" in md and "Budget `ci`" in md and "|    7 |" not in md
    assert "hinton-student-kd (seed 0): 7 errors" in md
    data = json.loads((tmp_path / "report.json").read_text())
    assert [c["verdict"] for c in data["claims"]] == ["PASS", "FAIL"]
    assert data["models"][0]["curve"] == [20, 7]
    pngs = [p for p in written if p.endswith(".png")]
    try:
        import matplotlib  # noqa: F401
        assert pngs and all((tmp_path / p.split("/")[-1]).stat().st_size > 1000 for p in pngs)
    except ImportError:
        assert not pngs


def test_judge_and_registry_cover_every_number():
    ids = {c.id for c in CLAIMS}
    for needed in ["hinton.teacher", "hinton.student_hard", "hinton.student_kd", "hinton.no3.errors",
                   "hinton.no3.errors_on_3", "hinton.no3.bias35", "hinton.no3.bias35_on_3", "hinton.only78.errors",
                   "hinton.only78.bias76", "blog.teacher", "blog.student_kd", "blog.cnn", "tutorial.params_deepnn",
                   "tutorial.params_lightnn", "tutorial.teacher", "tutorial.student", "tutorial.kd", "tutorial.cosine",
                   "tutorial.hint", "hinton.kd_beats_hard", "hinton.no3.bias_restores_3s",
                   "tutorial.kd_does_not_hurt", "tutorial.hint_does_not_hurt"]:
        assert needed in ids
    claim = CLAIMS_BY_ID["hinton.student_kd"]
    assert claim.thresholds["paper"] == Threshold("<=", 81.4)
    assert judge(claim, Measurement(81), "paper") == ("PASS", Threshold("<=", 81.4))
    assert judge(claim, Measurement(82), "paper")[0] == "FAIL"
    for c in CLAIMS:
        assert c.thresholds.get("paper") is not None, c.id
        assert c.ci_basis or c.thresholds.get("ci") is None or not c.recipes, f"{c.id}: ci threshold without basis"


def test_seeded_claims_train_each_seed_once_at_the_labs_offset(tmp_path):
    """Calibration at offset 3 must train students 45, 46, 47 (not the offset added twice)."""
    from kdverify.claims import mean_accuracy_gain
    from kdverify.lab import ClaimsLab

    lab = ClaimsLab(cache_dir=tmp_path, seed_offset=3, progress=None)
    asked: list[tuple[str, int]] = []

    def fake_get(recipe):  # noqa: ANN001, ANN202
        asked.append((recipe.name, recipe.seed))
        errors = 500 if recipe.name == "tutorial-lightnn" else 400
        confusion = torch.diag(torch.full((10,), 100))
        confusion[0, 1] = errors  # 1000 + errors test images, `errors` of them wrong
        return Trained(HintonMLP(16), recipe, "k", Evaluation(confusion), [])

    lab.dataset = lambda name: None
    lab.cache.get = fake_get
    base = get_recipe("tutorial-lightnn", "ci").seed
    m = mean_accuracy_gain(lab, "tutorial-lightnn-kd", "tutorial-lightnn", seeds=3)
    assert sorted({seed for _, seed in asked}) == [base + 3, base + 4, base + 5]
    assert m.value > 0  # 400 errors beat 500 at every seed
