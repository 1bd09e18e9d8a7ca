"""Every claim of the two reference works, judged against the published number (`pytest -m claims`).

Models are trained once per session and shared through the cache; the threshold of each claim is
the same in every budget (`--kd-budget` only changes how the models are obtained).
"""

import pytest

from kdverify.paper_claims import CLAIMS

pytestmark = pytest.mark.claims


@pytest.mark.parametrize("claim", [
    pytest.param(c, marks=pytest.mark.claims_gpu(budgets=("original",))) if c.recipes else c for c in CLAIMS
], ids=lambda c: c.id)
def test_claim(claim, kd_claim):
    kd_claim(claim)
