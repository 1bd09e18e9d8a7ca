"""pytest plugin (entry point `pytest11`): `pytest -m claims` reproduces the reference works.

Shaped like pytest-benchmark's: options in one group with one prefix (`--kd-`, `options.py`), parsed once into
a `Settings` object in `pytest_configure`; one session object (`session.KdSession`) that the hooks here and the
fixtures (`fixtures.py`) delegate to; markers registered in `pytest_configure`; GPU-only claims skipped in
`pytest_collection_modifyitems`; the table printed in `pytest_terminal_summary`.

Under pytest-xdist (`-n auto`) every worker has its own lab; they share the locked model cache,
so each recipe is trained once. Fixtures attach verdicts to test reports and the controller
gathers them (`kdverify.claims.ledger`), so there is one table and one report, in collection order.
The built-in claims are one test class per teacher and `-n` defaults to `--dist loadscope`, so a
worker that computed a teacher's outputs serves all of its students (`worksteal` when `-m` leaves out the claims).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from typing import Any

import pytest

from kdverify.plugin.fixtures import SESSION_KEY, kd_claim, kd_lab, kd_session, kd_trained
from kdverify.plugin.options import add_options
from kdverify.plugin.session import KdSession

__all__ = ["kd_claim", "kd_lab", "kd_trained"]  # fixtures: pytest finds them in this module's namespace


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claims: a reproduction claim; trains (or loads cached) models and "
                                       "checks the published number within its stated tolerance")
    config.addinivalue_line("markers", "claims_gpu(budgets): a claim whose listed budgets need a GPU; "
                                       "skipped with a reason when none is present")
    _default_dist(config)
    session = config.stash[SESSION_KEY] = KdSession(config)
    session.configure()


def _default_dist(config: pytest.Config) -> None:
    """`-n N` without `--dist`: `loadscope` sends each test class (the claims of one teacher) to one worker;
    a run whose `-m` leaves out every claim gets `worksteal`, which keeps both workers busy to the end of a unit run.

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
        option.dist = "worksteal" if excludes_marker(option.markexpr, "claims") else "loadscope"


def excludes_marker(markexpr: str, marker: str) -> bool:
    """Whether `-m markexpr` deselects every test carrying `marker`, whatever other markers it has: the expression
    is false with `marker` set, for every truth value of the other names in it (at most 8 of them)."""
    if not markexpr.strip():
        return False
    from _pytest.mark.expression import Expression

    try:
        expression = Expression.compile(markexpr)
    except Exception:  # noqa: BLE001 - a bad expression: pytest itself reports it
        return False
    others = sorted(set(re.findall(r"[^\s()]+", markexpr)) - {"and", "or", "not", marker})
    if len(others) > 8:
        return False
    for values in itertools.product((False, True), repeat=len(others)):
        truth = {**dict(zip(others, values)), marker: True}
        if expression.evaluate(lambda name, **kwargs: truth.get(name, False)):
            return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = kd_session(config).settings
    for item in items:
        marker = item.get_closest_marker("claims_gpu")
        if settings.device == "cpu" or marker is None or settings.budget not in marker.kwargs.get("budgets",
                                                                                                 ("original",)):
            continue  # --kd-device cpu: asked for explicitly, run it on the CPU however long it takes
        import torch

        if not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(
                reason=f"the {settings.budget} budget trains for GPU-hours and no CUDA device is present "
                       "(--kd-device cpu runs it on the CPU anyway)"))


def pytest_collection_finish(session: pytest.Session) -> None:
    kd_session(session.config).after_collection(session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    kd_session(session.config).close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    kd_session(config).summary(terminalreporter)
