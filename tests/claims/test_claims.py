"""Every claim of the two reference works, judged at the session's budget (`--kd-budget`).

Run just these with `pytest -m claims`; models are trained once and shared through the cache.
"""

import pytest

from kdverify.claims import CLAIMS

pytestmark = pytest.mark.claims


@pytest.mark.parametrize("claim", [
    pytest.param(c, marks=pytest.mark.claims_gpu(budgets=("paper",))) if c.recipes else c for c in CLAIMS
], ids=lambda c: c.id)
def test_claim(claim, kd_claim):
    kd_claim(claim)
