"""ci-budget thresholds: filled from `kdverify calibrate --seeds 0 1 2` (see calibrate.py)."""

CI_THRESHOLDS: dict[str, tuple[str | None, float | None, str]] = {}
