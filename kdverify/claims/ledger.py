"""The claims of a pytest run, gathered from test reports: one table and one report however many processes.

Fixtures attach each verdict (and the models behind it) to their test's report as a user
property. Reports travel from pytest-xdist workers to the controller, so the controller, and a
serial run alike, rebuild every verdict from reports and order them by collection order: the
table and the report of `pytest -n 2` hold what a serial run's hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import pytest

if TYPE_CHECKING:  # imported when a report carries a verdict: a pytest run without claims never loads torch
    from kdverify.cache.records import ModelRecord
    from kdverify.claims.core import Verdict

PROPERTY = "kdverify"


def attach(item: pytest.Item, verdict: Verdict | None, models: Iterable[ModelRecord]) -> None:
    """Record a verdict and/or models on the test item (they reach the controller with its report)."""
    seq = sum(1 for name, _ in item.user_properties if name == PROPERTY)
    item.user_properties.append((PROPERTY, {"seq": seq, "verdict": verdict.to_wire() if verdict else None,
                                            "models": [m.to_wire() for m in models]}))


class Ledger:
    """Verdicts and models of the whole run, in collection order; registered as a plugin for its hooks."""

    def __init__(self) -> None:
        self._order: dict[str, int] = {}
        self._verdicts: dict[tuple[str, int], Verdict] = {}
        self._models: dict[tuple[str, int, str], ModelRecord] = {}

    def set_order(self, nodeids: Iterable[str]) -> None:
        if not self._order:
            self._order = {nodeid: i for i, nodeid in enumerate(nodeids)}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.set_order(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """On the xdist controller: the collection order every worker saw (the table's order)."""
        self.set_order(ids)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Runs for every report, on a worker and again on the controller: the same verdicts, once per key."""
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name != PROPERTY:
                continue
            from kdverify.cache.records import ModelRecord
            from kdverify.claims.core import Verdict

            entry: dict[str, Any] = value
            if entry["verdict"] is not None:
                self._verdicts[(report.nodeid, entry["seq"])] = Verdict.from_wire(entry["verdict"])
            for wire in entry["models"]:
                model = ModelRecord.from_wire(wire)
                self._models.setdefault((model.recipe.name, model.recipe.seed, model.key), model)

    @property
    def verdicts(self) -> list[Verdict]:
        last = len(self._order)
        return [self._verdicts[k] for k in sorted(self._verdicts, key=lambda k: (self._order.get(k[0], last), k))]

    @property
    def models(self) -> list[ModelRecord]:
        return list(self._models.values())

    @property
    def budget(self) -> str:
        return ", ".join(sorted({v.budget for v in self._verdicts.values()}))
