"""The rules that turn per-seed measurements into ci thresholds (no training here)."""

import json

import pytest

from kdverify.calibrate import margin_threshold, merge, render_thresholds, threshold_entry
from kdverify.claims import CLAIMS_BY_ID


def test_error_counts_get_worst_seed_times_1_1_plus_3():
    assert margin_threshold(CLAIMS_BY_ID["hinton.teacher"], [120, 134, 128]) == ("<=", 151.0)  # ceil(147.4)+3


def test_percentages_get_one_point_or_ten_percent():
    assert margin_threshold(CLAIMS_BY_ID["hinton.only78.errors"], [30.0, 34.12]) == ("<=", 37.5)
    assert margin_threshold(CLAIMS_BY_ID["hinton.only78.bias76"], [5.0, 5.5]) == ("<=", 6.5)
    assert margin_threshold(CLAIMS_BY_ID["tutorial.student"], [46.3, 45.9]) == (">=", 44.9)


def test_relative_claim_keeps_its_fixed_threshold_when_every_seed_meets_it():
    op, value, basis = threshold_entry(CLAIMS_BY_ID["hinton.kd_beats_hard"], {0: (19, ""), 3: (12, ""), 6: (25, "")})
    assert (op, value) == (">=", 10)
    assert "seeds 0,3,6 measured 19, 12, 25" in basis


def test_relative_claim_is_not_gated_when_a_seed_misses_the_direction():
    by_seed = {0: (-1.73, ""), 3: (0.2, ""), 6: (-0.4, "")}
    op, value, basis = threshold_entry(CLAIMS_BY_ID["tutorial.cosine_does_not_hurt"], by_seed)
    assert op is None and value is None
    assert "not gated" in basis and "-1.73" in basis


def test_bias_shift_details_are_kept_in_the_basis():
    by_seed = {0: (159, "shift +2 tuned on test"), 3: (170, "shift +2.4 tuned on test")}
    _, _, basis = threshold_entry(CLAIMS_BY_ID["hinton.no3.bias_searched_test"], by_seed)
    assert "shift +2 tuned on test; shift +2.4 tuned on test" in basis


def test_rendered_module_is_valid_python_merging_files(tmp_path):
    for seeds, values in (([0], [134]), ([3, 6], [140, 128])):
        (tmp_path / f"c{seeds[0]}.json").write_text(json.dumps(
            {"seeds": seeds, "budget": "ci",
             "claims": {"hinton.teacher": {"values": values, "details": [""] * len(values)}}}))
    merged = merge(sorted(tmp_path.glob("*.json")))
    assert merged["hinton.teacher"] == {0: (134, ""), 3: (140, ""), 6: (128, "")}
    namespace: dict = {}
    exec(render_thresholds(merged), namespace)  # noqa: S102 - our own generated source
    assert namespace["CI_THRESHOLDS"]["hinton.teacher"][:2] == ("<=", 157.0)  # ceil(154)+3


def test_unit_without_a_margin_rule_is_refused():
    with pytest.raises(ValueError, match="no margin rule"):
        margin_threshold(CLAIMS_BY_ID["hinton.no3.bias_restores_3s"], [0.6])
