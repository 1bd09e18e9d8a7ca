"""Tabular data end to end: float features (N, D), normalised per feature, through train, distill, claims,
checkpoint, evaluate, export (a [batch, D] ONNX input, fp32 and int8) and the benchmarks' inputs."""

import onnx
import pytest
import torch

from kdverify import data
from kdverify.cache.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from kdverify.data import Dataset, normalize, register_dataset
from kdverify.errors import DataError
from kdverify.train.recipes import Recipe, get_recipe, register_recipe

D, CLASSES = 6, 3


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 6 dimensions, on a scale of hundreds (per-feature normalisation matters)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    centres = torch.tensor([[0.0] * D, [3.0] * D, [-3.0, 3.0] * (D // 2)])
    x = centres[labels] + torch.randn(n, D, generator=gen)
    return x * torch.tensor([1.0, 10.0, 100.0, 1.0, 10.0, 100.0]) + 500.0, labels


def load_tab(root=None) -> Dataset:
    return Dataset.from_tensors("tiny-tab", *_blobs(600, 0), *_blobs(300, 1), classes=("a", "b", "c"))


@pytest.fixture
def tabular(monkeypatch):
    register_dataset("tiny-tab", load_tab)
    register_recipe(Recipe("tab-teacher", "tiny-tab", "hinton_mlp", epochs=20, lr=0.1, arch_kwargs={"hidden": 32}))
    register_recipe(Recipe("tab-student-kd", "tiny-tab", "hinton_mlp", epochs=20, lr=0.1, arch_kwargs={"hidden": 8},
                           objective="kd", teacher="tab-teacher", temperature=4.0, soft_weight=0.7))
    return load_tab()


def test_features_are_normalised_per_feature_on_their_own_scale(tabular):
    assert tabular.input_shape == (D,) and tabular.train.images.dtype == torch.float32
    x = normalize(tabular.train.images, tabular.mean, tabular.std)
    assert torch.allclose(x.mean(0), torch.zeros(D), atol=1e-4) and torch.allclose(x.std(0, unbiased=False),
                                                                                    torch.ones(D), atol=1e-4)
    with pytest.raises(DataError, match="features must be finite"):
        Dataset.from_tensors("bad", torch.full((4, D), float("nan")), torch.zeros(4, dtype=torch.long),
                             torch.zeros(4, D), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="tabular features \\(N, D\\) take augment = 'none'"):
        data.augment(tabular.train.images[:4], "jitter2")


def test_train_distill_claim_checkpoint_export_and_benchmark_inputs(tabular, tmp_path):
    from click.testing import CliRunner

    from kdverify.claims.core import Claim, Threshold
    from kdverify.claims.lab import ClaimsLab
    from kdverify.cli import main
    from kdverify.export.onnx import export_checkpoint

    lab = ClaimsLab(None, "paper", "cpu", tmp_path / "cache", progress=None)
    claim = Claim("tab.kd", "test", "the KD student learns the blobs", "errors_on_test", {"recipe": "tab-student-kd"},
                  None, "errors", Threshold("<=", 60, "a fifth of 300"))
    verdict = lab.check(claim)
    assert verdict.verdict == "PASS", verdict.measured
    student = lab.trained("tab-student-kd")
    path = save_checkpoint(tmp_path / "student.pt", checkpoint_payload(
        student.model, "hinton_mlp", {"hidden": 8, "in_features": D, "num_classes": CLASSES}, tabular,
        get_recipe("tab-student-kd").to_dict()))
    ckpt = load_checkpoint(path)
    assert ckpt.input_shape == (D,) and len(ckpt.mean) == D
    result = CliRunner().invoke(main, ["evaluate", str(path)])
    assert result.exit_code == 0 and "errors" in result.output, result.output
    report = export_checkpoint(path, tmp_path / "student.onnx", quantize="int8", log=lambda line: None)
    graph = onnx.load(str(tmp_path / "student.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in graph] == ["batch", D]
    assert (tmp_path / "student.int8.onnx").is_file() and report is not None
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "student.onnx")).metadata_props}
    assert meta["input"].startswith("float32 (batch, D)")

    from benchmarks._zoo import random_inputs

    fake = type("Entry", (), {"input_shape": (D,), "mean": ckpt.mean, "std": ckpt.std})()
    x = random_inputs(fake, 16)
    assert x.shape == (16, D) and x.dtype == torch.float32 and abs(float(x.mean())) < 1.0
