"""One object per pytest session: the settings, the lab that trains and measures (created when a claim first needs
it, so a plain pytest run never loads torch), the executor, the ledger of verdicts, and what each hook asks of them."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Callable

import pytest

from kdverify.claims.ledger import Ledger, attach
from kdverify.errors import DataCorrupt, DataError, KdverifyError, first_line
from kdverify.plugin.options import Settings, check_paths_left_the_rootdir_alone
from kdverify.startup import import_user_modules, load_recipe_files

if TYPE_CHECKING:  # the plugin loads in every pytest run of the environment: torch only when a claim runs
    from kdverify.claims.core import Claim, Verdict
    from kdverify.cache.spec import ModelSpec
    from kdverify.claims.lab import ClaimsLab


class KdSession:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = Settings.from_config(config)
        self.ledger = Ledger()
        self.executor: Any = None
        self._lab: ClaimsLab | None = None
        self._collected: list[Claim] = []
        self._beyond_the_gate: dict[str, list[ModelSpec]] | None = None
        info = getattr(config, "workerinput", None)  # (index, count) on a pytest-xdist worker
        self.worker = (int(info["workerid"].lstrip("gw") or 0), int(info["workercount"])) if info else None

    # ------------------------------------------------------------------ pytest_configure
    def configure(self) -> None:
        """Everything that can be wrong with the options, as one-line usage errors before collection."""
        self.config.pluginmanager.register(self.ledger, "kdverify-ledger")  # gathers verdicts from reports
        check_paths_left_the_rootdir_alone(self.config)
        self.settings.check_output_folders()
        try:
            import_user_modules(self.settings.imports, search=self.settings.rootdir, how="--kd-import")
        except KdverifyError as exc:
            raise pytest.UsageError(str(exc)) from None
        try:
            load_recipe_files(self.settings.recipe_files)
        except KdverifyError as exc:
            raise pytest.UsageError(f"--kd-recipe-file {exc}") from None
        self._start_executor()
        if self.settings.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise pytest.UsageError("--kd-device cuda asked for, but torch sees no CUDA device")

    def _start_executor(self) -> None:
        """--kd-executor ray: reach (or start) Ray before anything is collected, so a bad address is one line."""
        s = self.settings
        if s.executor == "local" or s.plan:
            return
        if self.worker or getattr(self.config.option, "numprocesses", None):
            raise pytest.UsageError("--kd-executor ray spreads the trainings itself: use it without -n (pytest-xdist)")
        from kdverify.cache.executors import EXECUTORS

        executor = EXECUTORS.lookup(s.executor)(address=s.ray_address, retries=s.ray_retries, budget=s.budget,
                                                data_root=s.data_root, deterministic=s.deterministic,
                                                imports=list(s.imports), recipe_files=list(s.recipe_files))
        try:
            executor.connect()
        except KdverifyError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.executor = executor

    # ------------------------------------------------------------------ the lab
    @property
    def lab(self) -> "ClaimsLab":
        if self._lab is None:
            self._lab = self._make_lab()
        return self._lab

    def _make_lab(self) -> "ClaimsLab":
        import torch

        from kdverify.claims.lab import ClaimsLab
        from kdverify.train.cpu_memory import keep_freed_memory
        from kdverify.train.denormals import flush_denormals
        from kdverify.train.loop import progress_line

        s, worker = self.settings, self.worker
        if worker and not s.deterministic:
            torch.set_num_threads(max(1, torch.get_num_threads() // worker[1]))  # workers share the cores
        keep_freed_memory()  # this process is pytest's: reuse freed heap pages (see kdverify.train.cpu_memory)
        flush_denormals()  # already done where claims were collected; here for a claim checked from a plain test
        say = self._say
        return ClaimsLab(s.data_root, s.budget, s.device, s.cache,
                         progress=lambda recipe, record, total: say(progress_line(recipe, record, total)),
                         deterministic=s.deterministic, worker=worker[0] if worker else 0, say=say)

    def _say(self, line: str) -> None:
        """Shown live: training runs inside a test, where pytest captures output at the fd level."""
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if self.worker:  # a worker's terminal is not shown; its stderr is the controller's
                os.write(2, f"[gw{self.worker[0]}] {line}\n".encode())
            elif reporter is not None:
                reporter.write_line(line)

    # ------------------------------------------------------------------ pytest_collection_finish
    def after_collection(self, items: list[pytest.Item]) -> None:
        """Claims collected: denormals are flushed from here on (before the tests run, so torch's threads inherit
        the mode: kdverify.train.denormals). --kd-plan prints the plan and stops; --kd-executor ray submits what the
        plan must train."""
        self._collected = _collected_claims(items)
        if self._collected:
            from kdverify.train.denormals import flush_denormals

            flush_denormals()
        if (not self.settings.plan and self.executor is None) or self.worker:
            return
        from kdverify.claims.plan import estimate_seconds, format_plan, make_plan

        lab, seeds = self.lab, self.settings.seeds
        claims = self._collected
        if self.settings.gate_only:
            claims = [c for c in claims if c.id not in self.beyond_the_gate()]
        plan = make_plan(claims, lab.budget, seeds)
        lab.mark_cached(plan)
        estimate_seconds(plan)
        if self.settings.plan:
            self.config.pluginmanager.get_plugin("terminalreporter").write_line(format_plan(plan, lab.budget, seeds))
            pytest.exit("--kd-plan: nothing trained", returncode=0)
        if lab.say is not None:
            self.executor.say = lab.say  # live, past pytest's capture
        lab.cache.executor = self.executor
        self.executor.start(plan, lab.cache)

    def close(self) -> None:
        """Ray tasks still running when the session ends early (Ctrl-C, -x) are cancelled; nothing half-written
        reaches the cache (only the driver writes entries, whole and verified)."""
        if self.executor is not None:
            self.executor.close(cancel=True)

    def beyond_the_gate(self) -> "dict[str, list[ModelSpec]]":
        """claim id -> the models that only claims this run cannot gate need (computed once, from the collection)."""
        if self._beyond_the_gate is None:
            from kdverify.claims.plan import models_beyond_the_gate

            self._beyond_the_gate = models_beyond_the_gate(self._collected, self.settings.budget, self.settings.seeds)
        return self._beyond_the_gate

    def _gate_only_skip(self, claim: "Claim") -> str | None:
        """--kd-gate-only: why a claim this run can only report is not measured (its own models are not at hand)."""
        if not self.settings.gate_only or claim.gates_at(self.settings.seeds):
            return None
        if any(c.id == claim.id for c in self._collected):
            extra = self.beyond_the_gate().get(claim.id, [])
        else:  # checked from a plain test: beside the collected claims, whose gated ones may train its models
            from kdverify.claims.plan import models_beyond_the_gate

            extra = models_beyond_the_gate([*self._collected, claim], self.settings.budget,
                                           self.settings.seeds).get(claim.id, [])
        try:
            for spec in extra:
                self.lab.dataset(spec.recipe.dataset)  # the cache looks an entry up by its data's checksum
        except DataError:
            return None  # data that is not here: the measurement says so (skip or error), as without the option
        missing = [s for s in extra if not self.lab.cache.holds(s)]
        if not missing:
            return None
        from kdverify.cache.spec import PlannedModel
        from kdverify.claims.plan import estimate_seconds

        planned = [PlannedModel(s) for s in missing]
        estimate_seconds(planned)
        cost = sum(p.seconds or 0 for p in planned)
        why = f"gated from {claim.min_seeds} seeds, this run has {self.settings.seeds}" if claim.gated else "not gated"
        models = ", ".join(f"{s.name} s{s.seed}" for s in missing)
        return (f"--kd-gate-only: {claim.id} is only reported here ({why}) and needs {models} that no gated claim "
                f"needs{f' (~{cost / 60:.0f} min of training)' if cost else ''}; without --kd-gate-only it is measured")

    # ------------------------------------------------------------------ what the fixtures ask
    def data_problem(self, exc: DataError) -> tuple[str, Callable[[str], None]]:
        """SKIP when data is simply absent and was not asked for; otherwise an ERROR that fails the test."""
        if isinstance(exc, DataCorrupt) or self.settings.data_required:
            why = "corrupt data" if isinstance(exc, DataCorrupt) else "data required (a data root was given)"
            return "ERROR", lambda text: pytest.fail(f"{why}: {text}", pytrace=False)
        return "SKIP", lambda text: pytest.skip(f"no data: {text}")

    def trained(self, node: pytest.Item, recipe: str, seed: int | None = None) -> Any:
        try:
            model = self.lab.trained(recipe, seed)
        except DataError as exc:
            self.data_problem(exc)[1](str(exc))
        attach(node, None, [model.record()])
        return model

    def check(self, node: pytest.Item, claim: "Claim | str") -> "Verdict":
        """Measure, record and assert a claim: the verdict becomes the test's outcome."""
        if isinstance(claim, str):
            from kdverify.claims.paper import CLAIMS_BY_ID

            claim = CLAIMS_BY_ID[claim]
        lab = self.lab
        skip = self._gate_only_skip(claim)
        if skip:
            attach(node, lab.not_measured(claim, skip, "SKIP"), [])
            pytest.skip(skip)
        try:
            verdict = lab.check(claim, self.settings.seeds)
        except DataError as exc:
            status, stop = self.data_problem(exc)
            attach(node, lab.not_measured(claim, f"{exc}", status), [])
            stop(str(exc))
        except Exception as exc:  # a model that raises, a typo'd recipe: the claim is in the table, as ERROR
            attach(node, lab.not_measured(claim, f"{type(exc).__name__}: {first_line(exc)}", "ERROR"), [])
            raise
        attach(node, verdict, lab.last_models)
        _raise_outcome(claim, verdict, lab.budget, self.settings.inconclusive)
        return verdict

    # ------------------------------------------------------------------ pytest_terminal_summary
    def summary(self, tr: Any) -> None:
        if self.worker or not self.ledger.verdicts:
            return  # the controller speaks for every worker
        from kdverify.claims.report import budget_note, summary_line, table, write_report

        verdicts = self.ledger.verdicts
        tr.section(f"kdverify claims ({self.ledger.budget} budget)")
        tr.write_line(table(verdicts))
        tr.write_line(summary_line(verdicts))
        note = budget_note(verdicts)
        if note:
            tr.write_line(note)
        if self.settings.report:
            written = write_report(self.settings.report, verdicts, self.ledger.models)
            tr.write_line("report: " + ", ".join(written))


def _raise_outcome(claim: "Claim", verdict: "Verdict", budget: str, inconclusive: str) -> None:
    detail = f" ({verdict.detail})" if verdict.detail else ""
    measured = f"{claim.id}: measured {verdict.measured:.10g}{detail}, threshold {verdict.threshold}"
    if claim.paper_value is not None:
        measured += f", paper {claim.paper_value:.10g}"
    if verdict.verdict == "FAIL":
        pytest.fail(f"{measured} [{budget} budget]", pytrace=False)
    if verdict.verdict == "XPASS":
        pytest.fail(f"XPASS(strict) {measured}: declared unreproducible ({claim.xfail}) but it passed; "
                    "remove the declaration", pytrace=False)
    if verdict.verdict == "INCONCLUSIVE" and inconclusive == "fail":
        pytest.fail(f"INCONCLUSIVE {measured}: the mean passes, the 95% confidence bound {verdict.bound:.6g} "
                    f"over {verdict.n} seeds does not (more seeds, or --kd-inconclusive pass)", pytrace=False)
    if verdict.verdict == "XFAIL":
        pytest.xfail(f"{measured}; declared: {claim.xfail}")


def _collected_claims(items: list[pytest.Item]) -> list["Claim"]:
    """The claims the selected tests check (parametrized with `claim`), in collection order, each once."""
    found: dict[str, Claim] = {}
    for item in items:
        claim = getattr(item, "callspec", None) and item.callspec.params.get("claim")
        if isinstance(claim, str):
            from kdverify.claims.paper import CLAIMS_BY_ID

            claim = CLAIMS_BY_ID.get(claim)
        if claim is not None and hasattr(claim, "recipes"):
            found.setdefault(claim.id, claim)
    return list(found.values())
