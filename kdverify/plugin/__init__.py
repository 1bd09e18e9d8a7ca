"""pytest plugin (entry point `pytest11`): `pytest -m claims` reproduces the reference works.

Shaped like pytest-benchmark's: options in one group with one prefix (`--kd-`), markers
registered in `pytest_configure`, GPU-only claims skipped in `pytest_collection_modifyitems`,
small fixtures that delegate to one session object (`kdverify.claims.lab.ClaimsLab`), and the table
printed in `pytest_terminal_summary`.

Under pytest-xdist (`-n auto`) every worker has its own lab; they share the locked model cache,
so each recipe is trained once. Fixtures attach verdicts to test reports and the controller
gathers them (`kdverify.claims.ledger`), so there is one table and one report, in collection order.
The built-in claims are one test class per teacher and `-n` defaults to `--dist loadscope`, so a
worker that computed a teacher's outputs serves all of its students.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shlex
import sys
from typing import TYPE_CHECKING, Callable

import pytest

from kdverify.claims.ledger import Ledger, attach
from kdverify.errors import DataCorrupt, DataError, first_line
from kdverify.paths import named_data_root

if TYPE_CHECKING:  # the plugin loads in every pytest run of the environment: torch only when a claim runs
    from kdverify.claims.core import Claim, Verdict

LAB_KEY = pytest.StashKey["object"]()
EXECUTOR_KEY = pytest.StashKey["object"]()
LEDGER_KEY = pytest.StashKey[Ledger]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kdverify", "kdverify: knowledge-distillation claims")
    group.addoption("--kd-data-root", default=None, metavar="DIR",
                    help="dataset root in torchvision's layout (default: $KDVERIFY_DATA)")
    group.addoption("--kd-require-data", choices=("auto", "yes", "no"), default="auto",
                    help="missing data fails the claims instead of skipping them; auto = yes when a data root is "
                         "given (--kd-data-root or $KDVERIFY_DATA). Corrupt data always fails. (default: auto)")
    group.addoption("--kd-budget", choices=("ci", "paper", "original"), default="ci",
                    help="how models are obtained (thresholds are the same in every budget): ci = pinned teachers, "
                         "students trained (default); paper = everything trained with kdverify's fast recipes; "
                         "original = the works' own recipes (GPU)")
    group.addoption("--kd-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to train; auto = CUDA when present; with -n and several GPUs worker k uses "
                         "cuda:(k mod n) (default: auto)")
    group.addoption("--kd-cache", default=None, metavar="DIR",
                    help="trained-model cache, shareable between processes and machines (default: "
                         "$KDVERIFY_CACHE/models or ~/.cache/kdverify/models)")
    group.addoption("--kd-deterministic", action="store_true", default=False,
                    help="1 thread and deterministic kernels: bit-identical weights across processes (slower)")
    group.addoption("--kd-report", default=None, metavar="DIR",
                    help="write report.md, report.json and PNG pictures of the claims here")
    group.addoption("--kd-import", action="append", default=[], metavar="MODULE",
                    help="import MODULE first (it may register models, datasets, objectives, recipes); repeatable")
    group.addoption("--kd-seeds", type=_seed_count, default=1, metavar="N",
                    help="judge every claim that trains a student at N seeds (teachers fixed): PASS when the one-sided "
                         "95%% confidence bound on the mean passes, FAIL when the mean fails, else INCONCLUSIVE "
                         "(default: 1, today's verdict beside the committed reference range)")
    group.addoption("--kd-inconclusive", choices=("fail", "pass"), default="fail",
                    help="whether an INCONCLUSIVE verdict fails the run (default: fail)")
    group.addoption("--kd-recipe-file", action="append", default=[], metavar="TOML",
                    help="register the recipes of a TOML file (as `kdverify --recipe-file`) before collection; "
                         "repeatable; ini option `kd_recipe_file` (paths relative to the rootdir)")
    group.addoption("--kd-plan", action="store_true", default=False,
                    help="print every model the selected claims need (teachers first, cached or not, expected cost) "
                         "and exit without training")
    group.addoption("--kd-executor", choices=("local", "ray"), default="local",
                    help="where missing models train: local = in this process when a claim needs one (default); "
                         "ray = all of them planned up front as Ray tasks (pip install 'kdverify[ray]')")
    group.addoption("--kd-ray-address", default=None, metavar="ADDR",
                    help="the Ray cluster to use with --kd-executor ray: auto, ray://host:port (default: start a "
                         "local Ray bound to 127.0.0.1)")
    parser.addini("kd_import", type="linelist", default=[], help="modules kdverify imports first (like --kd-import)")
    parser.addini("kd_recipe_file", type="linelist", default=[],
                  help="TOML recipe files kdverify registers first (like --kd-recipe-file), relative to the rootdir")


def _seed_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed count from 1 to 1000")
    return n


def _default_to_loadscope(config: pytest.Config) -> None:
    """`-n N` without `--dist`: send each test class (the claims of one teacher) to one worker.

    `loadscope`, not `loadgroup`: with pytest 9.2, xdist's loadgroup silently stops grouping (it renames
    node ids, which pytest no longer reads back: pytest-dev/pytest-xdist#1386). xdist turns `-n` into
    `--dist load` before any plugin can see whether `--dist` was typed, so look where it could have been.
    """
    option = config.option
    if getattr(config, "workerinput", None) or not getattr(option, "numprocesses", None) or option.dist != "load":
        return
    typed = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
             *config.getini("addopts")]
    if not any(str(a).startswith(("--dist", "-d")) for a in typed):
        option.dist = "loadscope"


def _import_user_modules(config: pytest.Config) -> None:
    """--kd-import / kd_import: the rootdir joins sys.path only when a module is named, and last (no shadowing)."""
    names = [*config.getini("kd_import"), *config.getoption("--kd-import")]
    if names and str(config.rootpath) not in sys.path:
        sys.path.append(str(config.rootpath))
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise pytest.UsageError(f"--kd-import {name}: cannot import it ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - the user's module raised: one line, not an INTERNALERROR
            raise pytest.UsageError(f"--kd-import {name}: importing it raised {type(exc).__name__}: "
                                    f"{first_line(exc)}") from None


def _load_recipe_files(config: pytest.Config) -> None:
    """--kd-recipe-file / kd_recipe_file: the same TOML recipe files the CLI takes, one-line usage errors."""
    paths = [config.rootpath / p for p in config.getini("kd_recipe_file")] + config.getoption("--kd-recipe-file")
    if not paths:
        return
    from kdverify.errors import KdverifyError
    from kdverify.train.recipe_file import load_recipe_file

    for path in paths:
        try:
            load_recipe_file(path)
        except (KdverifyError, OSError, ValueError) as exc:
            raise pytest.UsageError(f"--kd-recipe-file {path}: {first_line(exc)}") from None


def _check_output_folders(config: pytest.Config) -> None:
    """--kd-report and --kd-cache are folders kdverify writes into: checked before anything is collected or
    trained (a report that cannot be written after an hour of claims loses the hour)."""
    for option in ("--kd-report", "--kd-cache"):
        folder = config.getoption(option)
        if not folder:
            continue
        path = os.path.abspath(folder)
        if os.path.exists(path) and not os.path.isdir(path):
            raise pytest.UsageError(f"{option} {folder}: exists and is not a folder")
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise pytest.UsageError(f"{option} {folder}: {existing} is not writable")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claims: a reproduction claim; trains (or loads cached) models and "
                                       "checks the published number within its stated tolerance")
    config.addinivalue_line("markers", "claims_gpu(budgets): a claim whose listed budgets need a GPU; "
                                       "skipped with a reason when none is present")
    _default_to_loadscope(config)
    config.stash[LEDGER_KEY] = Ledger()
    config.pluginmanager.register(config.stash[LEDGER_KEY], "kdverify-ledger")  # gathers verdicts from reports
    _check_output_folders(config)
    _import_user_modules(config)
    _load_recipe_files(config)
    _start_executor(config)
    if config.getoption("--kd-device", "auto") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--kd-device cuda asked for, but torch sees no CUDA device")


def _start_executor(config: pytest.Config) -> None:
    """--kd-executor ray: reach (or start) Ray before anything is collected, so a bad address is one line."""
    if config.getoption("--kd-executor", "local") == "local" or config.getoption("--kd-plan", False):
        return
    if _worker(config) or getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--kd-executor ray spreads the trainings itself: use it without -n (pytest-xdist)")
    from kdverify.cache.executors import EXECUTORS
    from kdverify.errors import KdverifyError

    executor = EXECUTORS.lookup(config.getoption("--kd-executor"))(
        address=config.getoption("--kd-ray-address"), budget=config.getoption("--kd-budget"),
        data_root=_data_root(config), deterministic=config.getoption("--kd-deterministic"),
        imports=[*config.getini("kd_import"), *config.getoption("--kd-import")],
        recipe_files=[str(config.rootpath / p) for p in config.getini("kd_recipe_file")]
        + [os.path.abspath(p) for p in config.getoption("--kd-recipe-file")])
    try:
        executor.connect()
    except KdverifyError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[EXECUTOR_KEY] = executor


def _collected_claims(items: list[pytest.Item]) -> list[Claim]:
    """The claims the selected tests check (parametrized with `claim`), in collection order, each once."""
    from kdverify.claims.paper import CLAIMS_BY_ID

    found: dict[str, Claim] = {}
    for item in items:
        claim = getattr(item, "callspec", None) and item.callspec.params.get("claim")
        if isinstance(claim, str):
            claim = CLAIMS_BY_ID.get(claim)
        if claim is not None and hasattr(claim, "recipes"):
            found.setdefault(claim.id, claim)
    return list(found.values())


def pytest_collection_finish(session: pytest.Session) -> None:
    """--kd-plan prints the plan and stops; --kd-executor ray submits what the plan must train."""
    config = session.config
    planning, executor = config.getoption("--kd-plan"), config.stash.get(EXECUTOR_KEY, None)
    if (not planning and executor is None) or _worker(config):
        return
    from kdverify.claims.plan import estimate_seconds, format_plan, make_plan

    seeds = config.getoption("--kd-seeds")
    lab = _lab(config)
    plan = make_plan(_collected_claims(session.items), lab.budget, seeds)
    lab.mark_cached(plan)
    if planning:
        estimate_seconds(plan)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(format_plan(plan, lab.budget, seeds))
        pytest.exit("--kd-plan: nothing trained", returncode=0)
    estimate_seconds(plan)
    if lab.say is not None:
        executor.say = lab.say  # live, past pytest's capture
    lab.cache.executor = executor
    executor.start(plan, lab.cache)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Ray tasks still running when the session ends early (Ctrl-C, -x) are cancelled; nothing half-written
    reaches the cache (only the driver writes entries, whole and verified)."""
    executor = session.config.stash.get(EXECUTOR_KEY, None)
    if executor is not None:
        executor.close(cancel=True)


def _worker(config: pytest.Config) -> tuple[int, int] | None:
    """(index, count) on a pytest-xdist worker, None elsewhere."""
    info = getattr(config, "workerinput", None)
    return (int(info["workerid"].lstrip("gw") or 0), int(info["workercount"])) if info else None


def _lab(config: pytest.Config):  # noqa: ANN202 - imported lazily so plain `pytest` stays light
    if LAB_KEY not in config.stash:
        import torch

        from kdverify.claims.lab import ClaimsLab
        from kdverify.train.cpu_memory import keep_freed_memory
        from kdverify.train.loop import progress_line

        opt = config.getoption
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        worker = _worker(config)
        if worker and not opt("--kd-deterministic"):
            torch.set_num_threads(max(1, torch.get_num_threads() // worker[1]))  # workers share the cores

        def say(line: str) -> None:
            """Shown live: training runs inside a test, where pytest captures output at the fd level."""
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                if worker:  # a worker's terminal is not shown; its stderr is the controller's
                    os.write(2, f"[gw{worker[0]}] {line}\n".encode())
                elif reporter is not None:
                    reporter.write_line(line)

        def progress(recipe, record, total) -> None:  # noqa: ANN001
            say(progress_line(recipe, record, total))

        keep_freed_memory()  # this process is pytest's: reuse freed heap pages (see kdverify.train.cpu_memory)
        config.stash[LAB_KEY] = ClaimsLab(_data_root(config), opt("--kd-budget"), opt("--kd-device"),
                                          opt("--kd-cache"), progress=progress,
                                          deterministic=opt("--kd-deterministic"),
                                          worker=worker[0] if worker else 0, say=say)
    return config.stash[LAB_KEY]


def _data_root(config: pytest.Config) -> str | None:
    return named_data_root(config.getoption("--kd-data-root"))


def _data_required(config: pytest.Config) -> bool:
    choice = config.getoption("--kd-require-data")
    return choice == "yes" or (choice == "auto" and _data_root(config) is not None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    budget, device = config.getoption("--kd-budget"), config.getoption("--kd-device")
    for item in items:
        marker = item.get_closest_marker("claims_gpu")
        if device == "cpu" or marker is None or budget not in marker.kwargs.get("budgets", ("original",)):
            continue  # --kd-device cpu: asked for explicitly, run it on the CPU however long it takes
        import torch

        if not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(
                reason=f"the {budget} budget trains for GPU-hours and no CUDA device is present "
                       "(--kd-device cpu runs it on the CPU anyway)"))


@pytest.fixture(scope="session")
def kd_lab(pytestconfig: pytest.Config):  # noqa: ANN201
    """The session's ClaimsLab: `kd_lab.trained("recipe-name")`, `kd_lab.dataset("mnist")`."""
    return _lab(pytestconfig)


def _data_problem(config: pytest.Config, exc: DataError) -> tuple[str, Callable[[str], None]]:
    """SKIP when data is simply absent and was not asked for; otherwise an ERROR that fails the test."""
    if isinstance(exc, DataCorrupt) or _data_required(config):
        why = "corrupt data" if isinstance(exc, DataCorrupt) else "data required (a data root was given)"
        return "ERROR", lambda text: pytest.fail(f"{why}: {text}", pytrace=False)
    return "SKIP", lambda text: pytest.skip(f"no data: {text}")


@pytest.fixture
def kd_trained(kd_lab, request: pytest.FixtureRequest) -> Callable:  # noqa: ANN001
    """`kd_trained(recipe, seed=None)` -> a trained model (cached); skips when its data is missing."""

    def get(recipe: str, seed: int | None = None):  # noqa: ANN202
        try:
            model = kd_lab.trained(recipe, seed)
        except DataError as exc:
            _data_problem(request.config, exc)[1](str(exc))
        attach(request.node, None, [model.record()])
        return model

    return get


@pytest.fixture
def kd_claim(kd_lab, request: pytest.FixtureRequest) -> Callable[[Claim | str], Verdict]:  # noqa: ANN001
    """`kd_claim(claim_or_id)` measures, records and asserts a claim (the same threshold in every budget)."""

    def check(claim: Claim | str) -> Verdict:
        if isinstance(claim, str):
            from kdverify.claims.paper import CLAIMS_BY_ID

            claim = CLAIMS_BY_ID[claim]
        try:
            verdict = kd_lab.check(claim, request.config.getoption("--kd-seeds"))
        except DataError as exc:
            status, stop = _data_problem(request.config, exc)
            attach(request.node, kd_lab.not_measured(claim, f"{exc}", status), [])
            stop(str(exc))
        except Exception as exc:  # a model that raises, a typo'd recipe: the claim is in the table, as ERROR
            attach(request.node, kd_lab.not_measured(claim, f"{type(exc).__name__}: {first_line(exc)}", "ERROR"), [])
            raise
        attach(request.node, verdict, kd_lab.last_models)
        detail = f" ({verdict.detail})" if verdict.detail else ""
        measured = f"{claim.id}: measured {verdict.measured:.10g}{detail}, threshold {verdict.threshold}"
        if claim.paper_value is not None:
            measured += f", paper {claim.paper_value:.10g}"
        if verdict.verdict == "FAIL":
            pytest.fail(f"{measured} [{kd_lab.budget} budget]", pytrace=False)
        if verdict.verdict == "XPASS":
            pytest.fail(f"XPASS(strict) {measured}: declared unreproducible ({claim.xfail}) but it passed; "
                        "remove the declaration", pytrace=False)
        if verdict.verdict == "INCONCLUSIVE" and request.config.getoption("--kd-inconclusive") == "fail":
            pytest.fail(f"INCONCLUSIVE {measured}: the mean passes, the 95% confidence bound {verdict.bound:.6g} "
                        f"over {verdict.n} seeds does not (more seeds, or --kd-inconclusive pass)", pytrace=False)
        if verdict.verdict == "XFAIL":
            pytest.xfail(f"{measured}; declared: {claim.xfail}")
        return verdict

    return check


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if _worker(config):
        return  # the controller speaks for every worker
    ledger = config.stash.get(LEDGER_KEY, None)
    if ledger is None or not ledger.verdicts:
        return
    from kdverify.claims.report import budget_note, summary_line, table, write_report

    verdicts = ledger.verdicts
    tr = terminalreporter
    tr.section(f"kdverify claims ({ledger.budget} budget)")
    tr.write_line(table(verdicts))
    tr.write_line(summary_line(verdicts))
    note = budget_note(verdicts)
    if note:
        tr.write_line(note)
    folder = config.getoption("--kd-report")
    if folder:
        written = write_report(folder, verdicts, ledger.models)
        tr.write_line("report: " + ", ".join(written))
