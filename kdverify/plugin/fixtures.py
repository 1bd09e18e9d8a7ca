"""The fixtures a claims test asks for; each delegates to the session object (`KdSession`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pytest

from kdverify.plugin.session import KdSession

if TYPE_CHECKING:
    from kdverify.claims.core import Claim, Verdict

SESSION_KEY = pytest.StashKey[KdSession]()


def kd_session(config: pytest.Config) -> KdSession:
    return config.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def kd_lab(pytestconfig: pytest.Config) -> Any:
    """The session's ClaimsLab: `kd_lab.trained("recipe-name")`, `kd_lab.dataset("mnist")`."""
    return kd_session(pytestconfig).lab


@pytest.fixture
def kd_trained(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`kd_trained(recipe, seed=None)` -> a trained model (cached); skips when its data is missing."""
    session = kd_session(request.config)
    return lambda recipe, seed=None: session.trained(request.node, recipe, seed)


@pytest.fixture
def kd_claim(request: pytest.FixtureRequest) -> Callable[["Claim | str"], "Verdict"]:
    """`kd_claim(claim_or_id)` measures, records and asserts a claim (the same threshold in every budget)."""
    session = kd_session(request.config)
    return lambda claim: session.check(request.node, claim)
