"""Every claim of the two reference works, judged against the published number (`pytest -m claims`).

Models are trained once per session and shared through the cache; the threshold of each claim is
the same in every budget (`--kd-budget` only changes how the models are obtained).

The claims are grouped into one class per teacher (`kdverify.claims.lab.claim_group`), so `pytest -n N`
(which kdverify runs as `--dist loadscope`) keeps each teacher's students on one worker: that worker
computes the teacher's outputs once and serves all of them.
"""

import pytest

from kdverify.claims.lab import claim_group
from kdverify.claims.paper import CLAIMS

pytestmark = pytest.mark.claims


def _class_name(group: str) -> str:
    return "Test" + "".join(part.capitalize() for part in group.replace("_", "-").split("-"))


def _claims_class(group: str, claims: list) -> type:
    @pytest.mark.parametrize("claim", [
        pytest.param(c, marks=pytest.mark.claims_gpu(budgets=("original",))) if c.recipes else c for c in claims
    ], ids=lambda c: c.id)
    def test_claim(self, claim, kd_claim) -> None:
        kd_claim(claim)

    return type(_class_name(group), (), {"test_claim": test_claim, "__doc__": f"Claims that need {group}."})


_GROUPS: dict[str, list] = {}
for _claim in CLAIMS:
    _GROUPS.setdefault(claim_group(_claim) or "no-training", []).append(_claim)
for _group, _claims in _GROUPS.items():
    globals()[_class_name(_group)] = _claims_class(_group, _claims)
