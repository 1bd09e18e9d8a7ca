"""Claims as data and how they are judged (`core`, torch-free), the papers' claims (`paper`), the metrics that
measure them (`measures`), and what runs and reports them: the lab, plans, references, ledger and report.

`import kdverify.claims` loads no torch: only the claim types, thresholds and `judge` are re-exported here.
"""

from kdverify.claims.core import (
                                  METRIC_DEFINITIONS,
                                  METRICS,
                                  Claim,
                                  Lab,
                                  Measurement,
                                  Threshold,
                                  Verdict,
                                  judge,
                                  register_metric,
)

__all__ = ["METRIC_DEFINITIONS", "METRICS", "Claim", "Lab", "Measurement", "Threshold", "Verdict", "judge",
           "register_metric"]
