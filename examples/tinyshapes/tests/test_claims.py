"""The example's claims, checked by kdverify's pytest plugin: `pytest -m claims` in this folder."""

import pytest
from kdverify_tinyshapes.claims import CLAIMS

pytestmark = pytest.mark.claims


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.id)
def test_claim(claim, kd_claim):
    kd_claim(claim)
