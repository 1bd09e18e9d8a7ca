"""The example's own claims, stated before any model was trained (like a paper's): same types as kdverify's."""

from kdverify.claims import Claim, Threshold

CLAIMS = [
    Claim("tinyshapes.teacher", "kdverify-tinyshapes", "the residual CNN teacher reaches 45% test accuracy on "
          "16x16 CIFAR-10 (4.5x chance) in 6 epochs", "accuracy_pct", {"recipe": "cifar16-teacher"}, None, "%",
          Threshold(">=", 45.0, "stated by the example")),
    Claim("tinyshapes.student_keeps_teacher", "kdverify-tinyshapes", "the distilled depthwise student, with an "
          "eighth of the teacher's weights, stays within 10 points of the teacher's accuracy", "accuracy_gap",
          {"better": "cifar16-teacher", "baseline": "cifar16-student-kd", "seeds": 1}, None, "pts",
          Threshold("<=", 10.0, "stated by the example")),
]
