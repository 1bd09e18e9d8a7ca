"""pytest plugin (entry point `pytest11`): `pytest -m claims` reproduces the reference works.

Shaped like pytest-benchmark's: options in one group with one prefix (`--kd-`), markers
registered in `pytest_configure`, GPU-only claims skipped in `pytest_collection_modifyitems`,
small fixtures that delegate to one session object (`kdverify.lab.ClaimsLab`), and the table
printed in `pytest_terminal_summary`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import pytest

from kdverify.claims import Claim, Verdict
from kdverify.errors import DataError

LAB_KEY = pytest.StashKey["object"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kdverify", "kdverify: knowledge-distillation claims")
    group.addoption("--kd-data-root", default=None, metavar="DIR",
                    help="dataset root in torchvision's layout (default: $KDVERIFY_DATA)")
    group.addoption("--kd-budget", choices=("ci", "paper", "original"), default="ci",
                    help="how models are obtained (thresholds are the same in every budget): ci = pinned teachers, "
                         "students trained (default); paper = everything trained with kdverify's fast recipes; "
                         "original = the works' own recipes (GPU)")
    group.addoption("--kd-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to train; auto = CUDA when present (default: auto)")
    group.addoption("--kd-cache", default=None, metavar="DIR",
                    help="trained-model cache (default: $KDVERIFY_CACHE/models or ~/.cache/kdverify/models)")
    group.addoption("--kd-report", default=None, metavar="DIR",
                    help="write report.md, report.json and PNG pictures of the claims here")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claims: a reproduction claim; trains (or loads cached) models and "
                                       "checks the published number within its stated tolerance")
    config.addinivalue_line("markers", "claims_gpu(budgets): a claim whose listed budgets need a GPU; "
                                       "skipped with a reason when none is present")
    if config.getoption("--kd-device", "auto") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--kd-device cuda asked for, but torch sees no CUDA device")


def _lab(config: pytest.Config):  # noqa: ANN202 - imported lazily so plain `pytest` stays light
    if LAB_KEY not in config.stash:
        from kdverify.lab import ClaimsLab

        from kdverify.train import progress_line

        opt = config.getoption
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")

        def progress(recipe, record, total) -> None:  # noqa: ANN001
            """Shown live: training runs inside a test, where pytest captures output at the fd level."""
            if reporter is None:
                return
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                reporter.write_line(progress_line(recipe, record, total))

        config.stash[LAB_KEY] = ClaimsLab(opt("--kd-data-root") or os.environ.get("KDVERIFY_DATA"),
                                          opt("--kd-budget"), opt("--kd-device"), opt("--kd-cache"), progress=progress)
    return config.stash[LAB_KEY]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    budget, device = config.getoption("--kd-budget"), config.getoption("--kd-device")
    if device == "cpu":
        return  # asked for explicitly: run it on the CPU, however long it takes
    for item in items:
        marker = item.get_closest_marker("claims_gpu")
        if marker is None or budget not in marker.kwargs.get("budgets", ("original",)):
            continue
        import torch

        if not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(
                reason=f"the {budget} budget trains for GPU-hours and no CUDA device is present "
                       "(--kd-device cpu runs it on the CPU anyway)"))


@pytest.fixture(scope="session")
def kd_lab(pytestconfig: pytest.Config):  # noqa: ANN201
    """The session's ClaimsLab: `kd_lab.trained("recipe-name")`, `kd_lab.dataset("mnist")`."""
    return _lab(pytestconfig)


@pytest.fixture
def kd_trained(kd_lab) -> Callable:  # noqa: ANN001
    """`kd_trained(recipe, seed=None)` -> a trained model (cached); skips when its data is missing."""

    def get(recipe: str, seed: int | None = None):  # noqa: ANN202
        try:
            return kd_lab.trained(recipe, seed)
        except DataError as exc:
            pytest.skip(f"no data: {exc}")

    return get


@pytest.fixture
def kd_claim(kd_lab) -> Callable[[Claim | str], Verdict]:  # noqa: ANN001
    """`kd_claim(claim_or_id)` measures, records and asserts a claim (the same threshold in every budget)."""

    def check(claim: Claim | str) -> Verdict:
        if isinstance(claim, str):
            from kdverify.paper_claims import CLAIMS_BY_ID

            claim = CLAIMS_BY_ID[claim]
        try:
            verdict = kd_lab.check(claim)
        except DataError as exc:
            kd_lab.skip(claim, f"no data: {exc}")
            pytest.skip(f"no data: {exc}")
        detail = f" ({verdict.detail})" if verdict.detail else ""
        measured = f"{claim.id}: measured {verdict.measured:.10g}{detail}, threshold {verdict.threshold}"
        if claim.paper_value is not None:
            measured += f", paper {claim.paper_value:.10g}"
        if verdict.verdict == "FAIL":
            pytest.fail(f"{measured} [{kd_lab.budget} budget]", pytrace=False)
        if verdict.verdict == "XPASS":
            pytest.fail(f"XPASS(strict) {measured}: declared unreproducible ({claim.xfail}) but it passed; "
                        "remove the declaration", pytrace=False)
        if verdict.verdict == "XFAIL":
            pytest.xfail(f"{measured}; declared: {claim.xfail}")
        return verdict

    return check


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    lab = config.stash.get(LAB_KEY, None)
    if lab is None or not lab.verdicts:
        return
    from kdverify.report import budget_note, summary_line, table, write_report

    tr = terminalreporter
    tr.section(f"kdverify claims ({lab.budget} budget)")
    tr.write_line(table(lab.verdicts))
    tr.write_line(summary_line(lab.verdicts))
    note = budget_note(lab.verdicts)
    if note:
        tr.write_line(note)
    folder = config.getoption("--kd-report")
    if folder:
        written = write_report(folder, lab.verdicts, lab.trained_models())
        tr.write_line("report: " + ", ".join(written))
