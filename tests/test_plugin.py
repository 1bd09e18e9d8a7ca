"""The claims plugin, exercised through pytester on generated test files."""

import os
from pathlib import Path

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

@pytest.mark.claims_gpu(budgets=("original",))
def test_gpu_only():
    pass

def test_plain_unit():
    pass
"""


@pytest.fixture
def no_data(pytester, tmp_path, monkeypatch):
    """No data root given at all: the data is looked for in the user cache and the claims may skip."""
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "empty"))
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
                                 "hinton.teacher*67*<= 74*SKIP*", "claims: 1 passed, 0 failed*1 skipped"])


def test_marker_selection_and_gpu_skip(no_data):
    result = no_data.runpytest("-m", "claims", "--kd-budget", "original", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2, deselected=2)
    import torch

    if not torch.cuda.is_available():
        no_data.makepyfile(test_gpu="""
import pytest
@pytest.mark.claims_gpu(budgets=("original",))
def test_gpu_only():
    pass
""")
        result = no_data.runpytest("test_gpu.py", "--kd-budget", "original", "-rs", "-p", "no:cacheprovider")
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines([("*the original budget trains for GPU-hours and no "
                                      "CUDA device is present*")])
        result = no_data.runpytest("test_gpu.py", "--kd-budget", "ci", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)


def test_failing_claim_fails_the_run_and_report_is_written(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("KDVERIFY_DATA", str(tmp_path / "empty"))
    pytester.makepyfile(test_fail="""
import dataclasses
from kdverify.claims.core import Threshold
from kdverify.claims.paper import CLAIMS_BY_ID

def test_wrong_count(kd_claim):
    claim = dataclasses.replace(CLAIMS_BY_ID["tutorial.params_deepnn"], threshold=Threshold("==", 1))
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


USER_DECLARED = """
from kdverify.claims.core import Claim, Threshold

def light(id, threshold, **kw):
    return Claim(id, "user", "LightNN parameter count", "parameter_count", {"arch": "light_nn"}, None, "params",
                 threshold, **kw)

def test_declared_and_fails(kd_claim):
    kd_claim(light("user.xfail", Threshold("<", 200_000), xfail="measured 267738: more than 200k, as expected"))

def test_declared_but_passes(kd_claim):
    kd_claim(light("user.xpass", Threshold("==", 267_738), xfail="thought it would not match"))

def test_reported_never_gated(kd_claim):
    verdict = kd_claim(light("user.report", Threshold("<", 1), gated=False))
    assert verdict.verdict == "REPORT" and verdict.measured == 267_738

def test_plain_pass(kd_claim):
    assert kd_claim(light("user.pass", Threshold(">=", 267_000))).verdict == "PASS"
"""


def test_xfail_xpass_and_report_claims(pytester, tmp_path, monkeypatch):
    """A user's claims: declared unreproducible and failing -> XFAIL (exit 0); declared but passing ->
    XPASS(strict), a failure; not gated -> REPORT, measured and shown but never failing the run."""
    monkeypatch.setenv("KDVERIFY_DATA", str(tmp_path / "empty"))
    pytester.makepyfile(test_declared=USER_DECLARED)
    result = pytester.runpytest("-rxXf", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([("XFAIL test_declared.py::test_declared_and_fails - user.xfail: measured 267738, "
                                  "threshold < 200000; declared: measured 267738: more than 200k, as expected")])
    result.stdout.fnmatch_lines([("XPASS(strict) user.xpass: measured 267738, threshold == 267738: declared "
                                  "unreproducible (thought it would not match) but it passed; remove the declaration")])
    result.stdout.fnmatch_lines(["FAILED test_declared.py::test_declared_but_passes - Failed: XPASS(strict)*"])
    result.stdout.fnmatch_lines(["user.xfail*267,738*< 200000*XFAIL*", "user.xpass*267,738*== 267738*XPASS*",
                                 "user.report*267,738*< 1*REPORT*", "user.pass*267,738*>= 267000*PASS*"])
    # without the one declared-but-passing claim, the run succeeds: XFAIL and REPORT do not fail it
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "not declared_but_passes")
    result.assert_outcomes(passed=2, xfailed=1, deselected=1)
    assert result.ret == pytest.ExitCode.OK


def test_cuda_device_without_cuda_is_a_usage_error(no_data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = no_data.runpytest("--kd-device", "cuda", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--kd-device cuda asked for, but torch sees no CUDA device*"])


@pytest.mark.processes
def test_training_progress_is_shown_live_despite_output_capture(pytester):
    """Training runs inside a test; its epoch lines must reach the terminal, not the capture buffer."""
    pytester.makepyfile(test_progress="""
        from kdverify.train.recipes import get_recipe
        from kdverify.train.loop import EpochRecord

        def test_trains(kd_lab):
            kd_lab.cache.progress(get_recipe("hinton-teacher"), EpochRecord(3, 0.25, 140, 9.0), 10000)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # real fd-level capture
    result.stdout.fnmatch_lines(["*[[]hinton-teacher seed 0[]] epoch    3/*  loss 0.2500  test errors 140 (1.40%)*"])
    assert result.ret == 0


def test_a_given_data_root_without_data_fails_the_run(no_data, tmp_path, monkeypatch):
    """The README's command sets KDVERIFY_DATA: if that folder holds no data, CI must fail, not skip to green."""
    monkeypatch.setenv("KDVERIFY_DATA", str(tmp_path / "nowhere"))
    result = no_data.runpytest("-p", "no:cacheprovider", "-k", "needs_mnist or params")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*data required (a data root was given): MNIST file*not found in*nowhere*",
                                 "hinton.teacher*ERROR*", "claims: 1 passed, 1 failed (1 of them could not be "
                                 "measured)*"])
    result = no_data.runpytest("-p", "no:cacheprovider", "-k", "needs_mnist", "--kd-require-data", "no")
    result.assert_outcomes(skipped=1)


def test_corrupt_data_fails_even_when_missing_data_may_skip(no_data, tmp_path, monkeypatch):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + bytes(64))  # the right names, the wrong bytes
    monkeypatch.setenv("KDVERIFY_DATA", str(tmp_path / "data"))
    result = no_data.runpytest("-p", "no:cacheprovider", "-k", "needs_mnist or user_fixture",
                               "--kd-require-data", "no")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*corrupt data: MNIST file train-images-idx3-ubyte*fails its checksum*"])


@pytest.mark.processes
def test_the_plugin_loads_no_torch_in_a_run_without_claims(pytester):
    """Installed, the plugin is loaded by every pytest run of the environment: it must stay light there."""
    pytester.makepyfile(test_plain="""
import sys

def test_unrelated():
    assert "torch" not in sys.modules, [m for m in sys.modules if m.startswith("kdverify")]
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # the entry point loads the plugin
    result.assert_outcomes(passed=1)


def test_bad_plugin_inputs_are_one_line_usage_errors_before_collection(pytester, tmp_path):
    pytester.makepyfile(boom="raise RuntimeError('boom at import')\n", test_x="def test_x():\n    pass\n")
    (tmp_path / "a-file").write_text("x")
    cases = [(["--kd-import", "boom"],
              "importing module 'boom' (--kd-import) failed at *boom.py:1: RuntimeError: boom at import"),
             ([f"--kd-report={tmp_path / 'a-file'}"], "exists and is not a folder"),
             ([f"--kd-cache={tmp_path / 'a-file'}"], "exists and is not a folder")]
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append(([f"--kd-cache={ro / 'cache'}"], "is not writable"))
    for args, message in cases:
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, args
        result.stderr.fnmatch_lines([f"*{message}*"])
        assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()


def test_a_path_after_a_space_that_moved_pytests_rootdir_is_one_line_naming_the_fix(pytester, tmp_path):
    """`--kd-cache DIR` with DIR outside the project: pytest (before plugins add options) took DIR for a test path,
    so the rootdir left the project and its ini with it (pytest-dev/pytest#8846). Inside the project, or with '=',
    nothing moved and the run goes on."""
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    pytester.mkdir("report-inside")
    outside = tmp_path / "cache"
    outside.mkdir()
    for option in ("--kd-cache", "--kd-report", "--kd-data-root"):
        result = pytester.runpytest("-p", "no:cacheprovider", option, str(outside))
        assert result.ret == pytest.ExitCode.USAGE_ERROR, option
        result.stderr.fnmatch_lines([f"*{option} {outside}: write {option}={outside} (with '='): pytest took the "
                                     "existing path after the space for a test path, so its rootdir became *"])
    for args in ([f"--kd-cache={outside}"], ["--kd-report", "report-inside"], ["--kd-cache", str(outside / "new")],
                 ["--rootdir", str(pytester.path), "--kd-cache", str(outside)]):
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        result.assert_outcomes(passed=1)


def test_kd_import_in_the_ini_file_is_imported_before_collection_and_before_the_options_modules(pytester):
    """The ini option `kd_import` (one module a line) does what --kd-import does, first; a module it names that
    cannot be imported is the same one-line usage error, before collection."""
    log = pytester.path / "imported.txt"
    record = f"open({str(log)!r}, 'a').write(__name__ + '\\n')\n"
    pytester.makepyfile(from_ini_a=record, from_ini_b=record, from_option=record, test_seen=f"""
import pathlib

SEEN_AT_COLLECTION = pathlib.Path({str(log)!r}).read_text().split()

def test_seen():
    assert SEEN_AT_COLLECTION == ["from_ini_a", "from_ini_b", "from_option"]
""")
    pytester.makeini("[pytest]\nkd_import =\n    from_ini_a\n    from_ini_b\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--kd-import", "from_option")
    result.assert_outcomes(passed=1)
    log.unlink()
    result = pytester.runpytest("-p", "no:cacheprovider")  # the ini alone
    result.assert_outcomes(failed=1)
    assert "assert ['from_ini_a', 'from_ini_b'] == " in result.stdout.str()
    pytester.makeini("[pytest]\nkd_import = no_such_module_of_mine\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot import module 'no_such_module_of_mine' (--kd-import): No module named*"])
    assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()


@pytest.mark.processes
def test_claims_and_the_plugin_are_data_importing_them_loads_no_torch():
    """Installing kdverify must not slow every other pytest run: claims, the paper's claims and the plugin are
    torch-free; torch loads when a claim is measured."""
    import subprocess
    import sys

    code = ("import sys, kdverify.claims.core, kdverify.claims.paper, kdverify.plugin\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('kdverify'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args, dist", [
    (["-n", "2"], "loadscope"),  # claims may run: one worker per teacher's claims
    (["-n", "2", "-m", "claims"], "loadscope"),
    (["-n", "2", "-m", "processes"], "loadscope"),  # a claim could carry that marker too
    (["-n", "2", "-m", "not claims"], "worksteal"),  # a unit run: both workers busy to the end
    (["-n", "2", "-m", "not claims and not processes"], "worksteal"),
    (["-n", "2", "-m", "not claims", "--dist", "load"], "load"),  # typed: kept
    (["-n", "2", "-m", "not claims", "--dist=loadfile"], "loadfile"),
    (["-m", "not claims"], "no"),  # no workers, nothing to choose
])
def test_n_without_dist_groups_a_teachers_claims_unless_the_markers_leave_out_every_claim(pytester, args, dist):
    from kdverify.plugin import _default_dist

    pytest.importorskip("xdist")
    config = pytester.parseconfig(*args)
    if config.option.numprocesses and config.option.dist == "no":
        config.option.dist = "load"  # what xdist's pytest_cmdline_main does with -n before any pytest_configure
    _default_dist(config)
    assert config.option.dist == dist


def test_ci_runs_the_readme_test_command_verbatim():
    """`.ci/run` is the regression gate only while it runs what a user types from the README's "Set up"."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = next(line for line in setup.splitlines() if "pytest" in line)
    ci = [line for line in (root / ".ci" / "run").read_text().splitlines() if "-m pytest" in line]
    assert ci == [command], f"README: {command!r}; .ci/run: {ci!r}"
