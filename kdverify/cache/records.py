"""What the session knows about a model it used: how it was obtained, on what machine, how it scored.

`ModelRecord` is plain data that crosses processes (pytest-xdist workers -> controller, reports);
`Trained` adds the model itself. The cache hands them out; claims, reports and the ledger read them (this module
needs torch for the confusion matrix, but not the trainer or the cache's store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kdverify.train.loop import EpochRecord
from kdverify.train.metrics import Evaluation
from kdverify.train.models import TappedModel
from kdverify.train.recipes import Recipe


@dataclass
class ModelRecord:
    """What reports say about a model, as plain data: how it was obtained, on what, and how it scored.

    It crosses processes (pytest-xdist workers -> controller) where the model itself does not.
    """

    recipe: Recipe
    key: str
    evaluation: Evaluation
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0  # training time when it was trained (also for cached and pinned models)
    source: str = "trained"  # trained | cache | pinned
    weights: str = ""  # sha256 of the weights (state_digest): what a student's key names its teacher by
    machine: str = ""  # where it was trained
    settings: dict[str, Any] = field(default_factory=dict)  # torch, device type, kernels, threads, determinism

    @property
    def provenance(self) -> str:
        """One phrase for reports: pinned teacher + sha256 prefix, trained now, or from cache."""
        how = {"trained": "trained now", "cache": "from cache", "pinned": "pinned"}[self.source]
        return f"{self.recipe.name} s{self.recipe.seed}: {how} ({self.weights[:12]}, {self.seconds:.0f} s to train)"

    def to_wire(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "key": self.key, "confusion": self.evaluation.confusion.tolist(),
                "history": [vars(h) for h in self.history], "seconds": self.seconds, "source": self.source,
                "weights": self.weights, "machine": self.machine, "settings": dict(self.settings)}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "ModelRecord":
        return cls(Recipe.from_dict(d["recipe"]), d["key"], Evaluation(torch.tensor(d["confusion"])),
                   [EpochRecord(**h) for h in d["history"]], d["seconds"], d["source"], d["weights"], d["machine"],
                   d["settings"])


@dataclass
class Trained(ModelRecord):
    """A trained model with what the claims need to judge it, and how it was obtained."""

    model: TappedModel | None = None

    def record(self) -> ModelRecord:
        return ModelRecord(**{k: v for k, v in vars(self).items() if k != "model"})
