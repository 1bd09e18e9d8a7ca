"""The claims plugin, exercised through pytester on generated test files."""

import pytest

USER_CLAIMS = """
import pytest

@pytest.mark.claims
def test_params(kd_claim):
    kd_claim("tutorial.params_lightnn")

@pytest.mark.claims
def test_needs_mnist(kd_claim):
    kd_claim("hinton.teacher")

@pytest.mark.claims
def test_user_fixture(kd_trained):
    kd_trained("hinton-teacher")

@pytest.mark.claims_gpu(budgets=("paper",))
def test_gpu_only():
    pass

def test_plain_unit():
    pass
"""


@pytest.fixture
def no_data(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("KDVERIFY_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "cache"))
    pytester.makepyfile(test_user=USER_CLAIMS)
    return pytester


def test_options_are_registered_in_one_group(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["kdverify: knowledge-distillation claims:", "*--kd-data-root*", "*--kd-budget*",
                                 "*--kd-device*", "*--kd-cache*", "*--kd-report*"])


def test_claims_without_data_skip_with_where_they_looked(no_data, tmp_path):
    result = no_data.runpytest("--strict-markers", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=2)
    result.stdout.fnmatch_lines(["*no data: MNIST file train-images-idx3-ubyte*not found in*empty*MNIST*raw*"])
    result.stdout.fnmatch_lines(["*kdverify claims (ci budget)*", "claim*paper*measured*threshold*verdict*",
                                 "tutorial.params_lightnn*267,738*267,738*== 267738*PASS*",
                                 "hinton.teacher*67*SKIP*", "claims: 1 passed, 0 failed, 1 skipped"])


def test_marker_selection_and_gpu_skip(no_data):
    result = no_data.runpytest("-m", "claims", "--kd-budget", "paper", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2, deselected=2)
    import torch

    if not torch.cuda.is_available():
        no_data.makepyfile(test_gpu="""
import pytest
@pytest.mark.claims_gpu(budgets=("paper",))
def test_gpu_only():
    pass
""")
        result = no_data.runpytest("test_gpu.py", "--kd-budget", "paper", "-rs", "-p", "no:cacheprovider")
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*paper budget trains for GPU-hours and no CUDA device*"])
        result = no_data.runpytest("test_gpu.py", "--kd-budget", "ci", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)


def test_failing_claim_fails_the_run_and_report_is_written(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("KDVERIFY_DATA", str(tmp_path / "empty"))
    pytester.makepyfile(test_fail="""
import dataclasses
from kdverify.claims import CLAIMS_BY_ID, Threshold

def test_wrong_count(kd_claim):
    claim = dataclasses.replace(CLAIMS_BY_ID["tutorial.params_deepnn"], thresholds={"ci": Threshold("==", 1)})
    kd_claim(claim)
""")
    report = tmp_path / "report"
    result = pytester.runpytest("--kd-report", str(report), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tutorial.params_deepnn: measured 1186986*threshold == 1*",
                                 "tutorial.params_deepnn*FAIL*"])
    import json

    data = json.loads((report / "report.json").read_text())
    assert data["claims"][0]["verdict"] == "FAIL" and data["claims"][0]["measured"] == 1186986
    assert "FAIL" in (report / "report.md").read_text()


def test_cuda_device_without_cuda_is_a_usage_error(no_data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = no_data.runpytest("--kd-device", "cuda", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--kd-device cuda asked for, but torch sees no CUDA device*"])


def test_training_progress_is_shown_live_despite_output_capture(pytester):
    """Training runs inside a test; its epoch lines must reach the terminal, not the capture buffer."""
    pytester.makepyfile(test_progress="""
        from kdverify.recipes import get_recipe
        from kdverify.train import EpochRecord

        def test_trains(kd_lab):
            kd_lab.cache.progress(get_recipe("hinton-teacher"), EpochRecord(3, 0.25, 140, 9.0), 10000)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # real fd-level capture
    result.stdout.fnmatch_lines(["*[[]hinton-teacher seed 0[]] epoch    3/*  loss 0.2500  test errors 140 (1.40%)*"])
    assert result.ret == 0
