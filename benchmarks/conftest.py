"""Fixtures, options and the summary table of `pytest benchmarks --benchmark-only`.

Options (each also an environment variable):
  --bench-threads N        / KDVERIFY_BENCH_THREADS        torch + ORT intra-op threads for inference (default 1)
  --bench-train-threads N  / KDVERIFY_BENCH_TRAIN_THREADS  torch threads for the training benchmark (default:
                                                           torch's own default, i.e. all cores)
  --bench-rounds-scale F   / KDVERIFY_BENCH_ROUNDS_SCALE   multiply rounds and time budgets (0.1 = quick check)
  --bench-teacher PATH     / KDVERIFY_BENCH_TEACHER        time this teacher checkpoint against --bench-student
  --bench-student PATH     / KDVERIFY_BENCH_STUDENT        instead of the built-in pairs (both or neither)
The built-in pairs' checkpoints are looked for in --kd-cache (the kdverify plugin's option), else
$KDVERIFY_CACHE/models, else ~/.cache/kdverify/models, then among kdverify's pinned teachers.
"""

from __future__ import annotations

import pytest

from benchmarks import _pairs as P
from benchmarks import _summary
from benchmarks import _support as S
from benchmarks._zoo import Zoo

RESULTS_KEY = pytest.StashKey[list]()
SETTINGS_KEY = pytest.StashKey[S.Settings]()
ZOO_KEY = pytest.StashKey[Zoo]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kdverify-bench", "kdverify benchmarks")
    group.addoption("--bench-threads", type=int, default=None, metavar="N",
                    help=f"torch.set_num_threads(N) and ORT intra_op N for inference (default ${S.ENV_THREADS} or 1)")
    group.addoption("--bench-train-threads", type=int, default=None, metavar="N",
                    help=f"torch threads for the training benchmark (default ${S.ENV_TRAIN_THREADS} or "
                         "torch's default = all cores)")
    group.addoption("--bench-rounds-scale", type=float, default=None, metavar="F",
                    help=f"scale rounds and time budgets, e.g. 0.1 for a quick check "
                         f"(default ${S.ENV_ROUNDS_SCALE} or 1)")
    group.addoption("--bench-teacher", default=None, metavar="PATH",
                    help=f"teacher checkpoint to time against --bench-student instead of the built-in pairs "
                         f"(default ${P.ENV_TEACHER})")
    group.addoption("--bench-student", default=None, metavar="PATH",
                    help=f"student checkpoint to time against --bench-teacher (default ${P.ENV_STUDENT})")


def _settings(config: pytest.Config) -> S.Settings:
    if SETTINGS_KEY not in config.stash:
        config.stash[SETTINGS_KEY] = S.settings_from(config)
    return config.stash[SETTINGS_KEY]


@pytest.hookimpl(trylast=True)  # after the kdverify plugin has imported --kd-import modules (their architectures)
def pytest_configure(config: pytest.Config) -> None:
    """Read the pair checkpoints now, so a wrong path or a mismatched pair is one usage-error line."""
    if not config.getoption("help"):
        config.stash[P.PAIRS_KEY] = P.pairs_from(config, _settings(config).cache_dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With a pair of the user's own, the training benchmark (kdverify's loop on synthetic MNIST, with targets of
    its own) says nothing about that pair: skipped with the reason, so no built-in target is reported for it."""
    if not P.user_pair_given(config):
        return
    for item in items:
        if item.path.name == "test_train_throughput.py":
            item.add_marker(pytest.mark.skip(reason="times kdverify's own training loop on synthetic MNIST, not your "
                                                    "pair; run without --bench-teacher/--bench-student to see it"))


def pytest_report_header(config: pytest.Config) -> str:
    return "kdverify benchmarks: " + S.header_line(_settings(config))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Saved runs (--benchmark-autosave) record the thread settings and library versions too."""
    settings = _settings(config)
    machine_info["kdverify_bench"] = {"cpu_model": S.cpu_model(), "inference_threads": settings.threads,
                                      "ort_inter_op_threads": 1, "ort_spinning": False,
                                      "train_threads": settings.train_threads, **S.versions()}


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config) -> S.Settings:
    return _settings(pytestconfig)


@pytest.fixture(scope="session")
def bench_results(pytestconfig: pytest.Config) -> list[dict]:
    """Every benchmark's extra_info dict, for the cross-benchmark numbers and the summary."""
    return pytestconfig.stash.setdefault(RESULTS_KEY, [])


@pytest.fixture(scope="session")
def zoo(pytestconfig: pytest.Config, bench_settings: S.Settings, tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """Models (trained checkpoints or fresh weights) and their ONNX files, exported once per session."""
    zoo = Zoo(bench_settings, tmp_path_factory.mktemp("onnx"), pytestconfig.stash[P.PAIRS_KEY])
    pytestconfig.stash[ZOO_KEY] = zoo
    return zoo


@pytest.fixture
def inference_threads(bench_settings: S.Settings):  # noqa: ANN201
    with S.torch_threads(bench_settings.threads):
        yield bench_settings.threads


@pytest.fixture
def train_threads(bench_settings: S.Settings):  # noqa: ANN201
    with S.torch_threads(bench_settings.train_threads):
        yield bench_settings.train_threads


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):  # noqa: ANN201
    # Runs before pytest-benchmark's own sessionfinish saves JSON, so speedups and ratios are saved too.
    results = session.config.stash.get(RESULTS_KEY, None)
    if results:
        _summary.derive(results)
    return (yield)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    results = config.stash.get(RESULTS_KEY, None)
    if not results or not any("p50_ms" in r or "samples_per_s" in r for r in results):
        return
    terminalreporter.section("kdverify benchmarks summary")
    for line in _summary.summary_lines(results, _settings(config), config.stash.get(ZOO_KEY, None)):
        terminalreporter.write_line(line)
