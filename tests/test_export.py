"""ONNX export: round trips for every architecture, int8, metadata, and every bad input as one line.

Random-weight models and synthetic datasets only; `load_dataset` is patched to report the data
missing (and no data root is given), so validation runs on deterministic random inputs.
"""

import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from conftest import make_pattern_split
from kdverify.cache.checkpoint import checkpoint_payload, load_checkpoint, payload_seal, save_checkpoint
from kdverify.cli import main
from kdverify.data import CIFAR_CLASSES, CIFAR_NORM, Dataset
from kdverify.errors import DataMissing, KdverifyError
from kdverify.export import onnx as ex
from kdverify.export import quantize as q
from kdverify.export import torchlib
from kdverify.export import validate as v
from kdverify.train.loop import fit
from kdverify.train.models import build_model
from kdverify.train.recipes import Recipe

# every layer of every architecture; the CIFAR teacher on 16x16 inputs (the same graph, a quarter of its convolutions)
ARCHS = {"hinton_mlp": {"hidden": 32}, "blog_cnn": {}, "light_nn": {}, "deep_nn": {"image_size": 16}}


@pytest.fixture(scope="module")
def tiny_cifar() -> Dataset:
    return Dataset("cifar10", "synthetic", "s", CIFAR_CLASSES, *CIFAR_NORM,
                   make_pattern_split(100, 0, channels=3, size=32), make_pattern_split(300, 1, channels=3, size=32))


def _checkpoint(path, model_arch, dataset, seed=0, **payload_changes):
    """A random-weight checkpoint; `payload_changes` override fields of the saved dict."""
    torch.manual_seed(seed)
    model = build_model(model_arch, **ARCHS[model_arch]).eval()
    payload = checkpoint_payload(model, model_arch, ARCHS[model_arch], dataset,
                                 {"name": f"test-{model_arch}", "dataset": dataset.name},
                                 {"test": {"errors": 7, "total": len(dataset.test)}})
    payload.update(payload_changes)
    if payload_changes:  # a producer that wrote these values sealed them: the check under test is the one after
        payload["payload_sha256"] = payload_seal(payload)
    return save_checkpoint(path, payload)


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    """No dataset anywhere, and none asked for: export falls back to random inputs."""
    def missing(name, root=None, *args, **kwargs):
        raise DataMissing(f"{name} files not found in nowhere; point --data-root at them")

    monkeypatch.setattr(ex, "load_dataset", missing)
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)


@pytest.fixture
def mlp_ckpt(tmp_path, tiny_mnist):
    return _checkpoint(tmp_path / "mlp.pt", "hinton_mlp", tiny_mnist)


def _leftovers(folder):
    """Everything in `folder` an export could have left: ONNX files and temp files."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".tmp") or p.name.startswith("."))


def _export(ckpt, out, tmp_path, **kw):
    lines = []
    report = ex.export_checkpoint(ckpt, out, log=lines.append, **kw)
    return report, lines


@pytest.fixture(scope="module")
def tiny_cifar16() -> Dataset:
    return Dataset("cifar10", "synthetic", "s16", CIFAR_CLASSES, *CIFAR_NORM,
                   make_pattern_split(100, 0, channels=3, size=16), make_pattern_split(100, 1, channels=3, size=16))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_round_trip_every_architecture(arch, tmp_path, tiny_mnist, tiny_cifar, tiny_cifar16):
    dataset = {"light_nn": tiny_cifar, "deep_nn": tiny_cifar16}.get(arch, tiny_mnist)
    ckpt_path = _checkpoint(tmp_path / f"{arch}.pt", arch, dataset)
    out = tmp_path / "out" / f"{arch}.onnx"
    out.parent.mkdir()
    report, lines = _export(ckpt_path, out, tmp_path)

    assert out.is_file() and report.path == out and report.size_bytes == out.stat().st_size
    assert report.agreement == 1.0 and report.max_abs_diff <= 1e-4 and report.errors is None
    assert lines[-1].startswith(f"exported {out}: ") and "opset 18, fp32" in lines[-1]
    assert "top-1 agreement 100.00% on 264 random inputs" in lines[-1] and "NO REAL DATA USED" in lines[0]
    assert _leftovers(out.parent) == [out.name]

    proto = onnx.load(out)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    assert [o.version for o in proto.opset_import if o.domain == ""] == [18]

    model = load_checkpoint(ckpt_path).model
    session = v.ort_session(out)
    for batch in (3, 32):  # sizes never used during validation
        x = torch.randn(batch, *dataset.input_shape, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)


def test_metadata_reads_back_through_onnxruntime(mlp_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    _export(mlp_ckpt, out, tmp_path)
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    ckpt = load_checkpoint(mlp_ckpt)
    assert meta["architecture"] == "hinton_mlp"
    assert json.loads(meta["arch_kwargs"]) == {"hidden": 32}
    assert json.loads(meta["classes"]) == list(ckpt.classes)
    assert json.loads(meta["input_shape"]) == [1, 28, 28]
    assert json.loads(meta["mean"]) == [0.5] and json.loads(meta["std"]) == [0.5]
    assert meta["source_sha256"] == ckpt.sha256
    assert meta["recipe"] == "test-hinton_mlp" and meta["dataset_variant"] == "synthetic"
    assert json.loads(meta["test_errors"])["errors"] == 7  # recorded by the checkpoint: no data here
    assert meta["kdverify_version"] == __import__("kdverify").__version__
    assert meta["precision"] == "fp32"


def test_int8_mlp_is_smaller_and_runs(mlp_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    report, lines = _export(mlp_ckpt, out, tmp_path, quantize="int8")
    int8 = tmp_path / "m.int8.onnx"
    assert report.int8_path == int8 and int8.is_file()
    assert int8.stat().st_size < 0.5 * out.stat().st_size
    assert report.int8_agreement is not None and report.int8_agreement > 0.9
    assert "int8 accuracy gate NOT run (no real data)" in lines[-1] and lines[-1].startswith(f"exported {int8}")
    assert "the int8 accuracy gate cannot run" in lines[0]
    session = v.ort_session(int8)
    assert session.get_modelmeta().custom_metadata_map["precision"] == "int8"
    assert session.run(None, {"input": np.zeros((5, 1, 28, 28), np.float32)})[0].shape == (5, 10)
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(int8).graph.node)
    assert _leftovers(tmp_path) == ["m.int8.onnx", "m.onnx"]


@pytest.fixture(scope="module")
def trained_mlp(tmp_path_factory, tiny_mnist):
    """A checkpoint of an MLP trained on the synthetic task, and that task with a 1,000-image test split
    (so one error is 0.1 pp and the 0.3 pp limit is exactly 3 errors)."""
    recipe = Recipe("tiny-mlp", "mnist", "hinton_mlp", arch_kwargs={"hidden": 64}, epochs=3, lr=0.05, momentum=0.9,
                    batch_size=100)
    result = fit(recipe, tiny_mnist, progress=None)
    payload = checkpoint_payload(result.model, "hinton_mlp", {"hidden": 64}, tiny_mnist, recipe.to_dict(),
                                 {"test": result.evaluation.to_dict()})
    dataset = dataclasses.replace(tiny_mnist, test=make_pattern_split(1000, 1))
    return save_checkpoint(tmp_path_factory.mktemp("trained") / "mlp.pt", payload), dataset


def test_int8_gate_allows_at_most_0_3_pp_more_test_errors(trained_mlp, tmp_path, monkeypatch):
    ckpt, dataset = trained_mlp
    assert q.INT8_MAX_EXTRA_ERROR_PP == 0.3
    monkeypatch.setattr(ex, "load_dataset", lambda name, root=None: dataset)
    report, lines = _export(ckpt, tmp_path / "real.onnx", tmp_path, quantize="int8")
    assert report.total == 1000 and report.dataset_variant == "synthetic"
    assert report.errors < 50, "the model is trained: the gate is judged on a model worth shipping"
    assert report.int8_errors <= report.errors + 3  # the real int8 copy of a trained MLP passes the real rule
    assert lines[-1].startswith(f"exported {tmp_path / 'real.int8.onnx'}") and "limit +0.30 pp" in lines[-1]
    meta = v.ort_session(report.int8_path).get_modelmeta().custom_metadata_map
    assert json.loads(meta["test_errors"])["errors"] == report.int8_errors
    fp32_errors = report.errors

    def int8_errors_plus(extra):
        """What the int8 file measures: `extra` errors more than fp32 (the fp32 measurement is untouched)."""
        return lambda session, inputs, labels, chunk, name: fp32_errors + extra

    monkeypatch.setattr(q, "count_errors", int8_errors_plus(3))  # +0.30 pp: at the limit, allowed
    report, lines = _export(ckpt, tmp_path / "edge.onnx", tmp_path, quantize="int8")
    assert report.errors == fp32_errors and report.int8_errors == fp32_errors + 3 and "(+0.30 pp," in lines[-1]
    monkeypatch.setattr(q, "count_errors", int8_errors_plus(4))  # +0.40 pp: refused, and nothing is written
    with pytest.raises(ex.ExportError, match=r"int8 model loses too much accuracy: .*\(\+0\.40 pp, limit \+0\.3 pp\)"):
        _export(ckpt, tmp_path / "over.onnx", tmp_path, quantize="int8")
    assert _leftovers(tmp_path) == ["edge.int8.onnx", "edge.onnx", "real.int8.onnx", "real.onnx"]


def test_conv_int8_is_static_qdq_with_calibration(tmp_path, tiny_cifar):
    fp32, int8 = tmp_path / "c.onnx", tmp_path / "c.int8.onnx"
    ex.export_model(build_model("light_nn").eval(), (3, 32, 32), fp32, metadata={"precision": "fp32"})
    calibration = torch.randn(64, 3, 32, 32)
    assert q.int8_method(fp32, calibration) == "static" and q.int8_method(fp32, None) == "dynamic"
    q.quantize_int8(fp32, int8, calibration)
    proto = onnx.load(int8)
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and ops[-1] == "Gemm"  # the logit layer stays fp32
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "int8"
    out = v.ort_session(int8).run(None, {"input": calibration[:4].numpy()})[0]
    assert out.shape == (4, 10) and np.isfinite(out).all()


def test_int8_keeps_depthwise_convolutions_in_fp32_and_quantises_the_others():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1, groups=3), torch.nn.Conv2d(3, 8, 1),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()
    fp32 = ex.to_proto(model, (3, 8, 8), 18, True)
    int8, method = q.quantize_proto(fp32, torch.randn(32, 3, 8, 8))
    convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    produced_by = {out: n.op_type for n in int8.graph.node for out in n.output}
    weight_from = {name: produced_by.get(node.input[1], "initializer") for name, node in convs.items()}
    grouped = {n.name for n in fp32.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i == 3
                                                                            for a in n.attribute)}
    assert method == "static" and len(convs) == 2 and len(grouped) == 1
    assert {name: weight_from[name] for name in grouped} == {name: "initializer" for name in grouped}  # fp32
    assert sorted(weight_from.values()) == ["DequantizeLinear", "initializer"]  # the 1x1 conv is int8


def test_validator_fails_when_onnx_disagrees_with_torch(mlp_ckpt, tmp_path, monkeypatch):
    real_to_proto = ex.to_proto

    def export_a_different_model(model, *args, **kwargs):
        wrong = copy.deepcopy(model)
        with torch.no_grad():
            wrong.output_layer.bias[0] += 0.01
        return real_to_proto(wrong, *args, **kwargs)

    monkeypatch.setattr(ex, "to_proto", export_a_different_model)
    result = CliRunner().invoke(main, ["export", str(mlp_ckpt), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "m.onnx disagrees with PyTorch" in result.output
    assert "max |logit difference| 1.00e-02" in result.output
    assert _leftovers(tmp_path) == []


def test_the_exporters_registry_is_built_once_and_the_graphs_are_the_same_bytes(monkeypatch):
    from torch.onnx._internal.exporter import _registration

    torch.manual_seed(0)
    model = build_model("hinton_mlp", hidden=16)
    monkeypatch.setattr(ex, "registry_built_once", __import__("contextlib").nullcontext)
    rebuilt_each_time = ex.to_proto(model, (1, 28, 28), 18, True).SerializeToString()
    monkeypatch.undo()

    builds = []
    original = _registration.ONNXRegistry.__dict__["from_torchlib"]

    def counting(cls, *args, **kwargs):
        builds.append(args)
        return original.__func__(cls, *args, **kwargs)

    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(counting))
    monkeypatch.setattr(torchlib, "_BUILT", {})
    graphs = [ex.to_proto(model, (1, 28, 28), 18, True).SerializeToString() for _ in range(3)]
    assert graphs == [rebuilt_each_time] * 3
    assert len(builds) == 1
    assert _registration.ONNXRegistry.__dict__["from_torchlib"].__func__ is counting  # put back after each export

    with torchlib.registry_built_once():  # a caller's custom op stays in its own copy
        mine = _registration.ONNXRegistry.from_torchlib(18)
        mine.functions.clear()
        assert _registration.ONNXRegistry.from_torchlib(18).functions
    assert len(builds) == 2  # opset 18 passed positionally is another call signature: built once more


def test_validator_runs_onnx_checker(mlp_ckpt, tmp_path, monkeypatch):
    real_to_proto = ex.to_proto

    def export_then_break(*args, **kwargs):
        proto = real_to_proto(*args, **kwargs)
        proto.graph.node[0].input[0] = "no_such_tensor"
        return proto

    monkeypatch.setattr(ex, "to_proto", export_then_break)
    with pytest.raises(ex.ExportError, match="^m.onnx fails onnx.checker"):
        _export(mlp_ckpt, tmp_path / "m.onnx", tmp_path)
    assert _leftovers(tmp_path) == []


def test_default_output_goes_to_exports(mlp_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", str(mlp_ckpt)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exports" / "mlp.onnx").is_file()
    assert result.output.strip().splitlines()[-1].startswith("exported exports/mlp.onnx: ")


def test_a_failed_export_leaves_no_empty_exports_folder(mlp_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def unusable_data(*args, **kwargs):
        raise ex.ExportError("MNIST is corrupt (a stand-in failure after the output checks)")

    monkeypatch.setattr(ex, "_load_data", unusable_data)
    result = CliRunner().invoke(main, ["export", str(mlp_ckpt)])
    assert result.exit_code == 1 and "MNIST is corrupt" in result.output
    assert not (tmp_path / "exports").exists()


def test_ort_session_settings(mlp_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    _export(mlp_ckpt, out, tmp_path)
    options = v.ort_session(out, threads=2, optimization="basic").get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(KdverifyError, match="cannot load"):
        v.ort_session(mlp_ckpt)  # a checkpoint is not an ONNX file


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _bad_checkpoint(kind, folder, dataset):
    """A path whose export must fail: (checkpoint path, expected message)."""
    good = folder / "good.pt"
    if kind == "missing":
        return folder / "nope.pt", "no such file"
    if kind == "directory":
        (folder / "dir.pt").mkdir()
        return folder / "dir.pt", "is a directory"
    path = folder / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty"
    if kind == "truncated":
        _checkpoint(good, "hinton_mlp", dataset)
        path.write_bytes(good.read_bytes()[:2000])
        return path, "not a readable checkpoint"
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return path, "not a readable checkpoint"
    if kind == "pickle-runs-code":
        torch.save({"format": "kdverify-checkpoint", "x": _RunsCode()}, path)  # a torch file naming a function
        return path, "refused under weights_only"
    if kind == "unknown-arch":
        return _checkpoint(path, "hinton_mlp", dataset, arch="resnet9000"), "unknown architecture 'resnet9000'"
    if kind == "wrong-shapes":
        return _checkpoint(path, "hinton_mlp", dataset, arch_kwargs={"hidden": 48}), "weights do not fit"
    raise AssertionError(kind)


def _run_export(args):
    return CliRunner().invoke(main, ["export", *args])


def _assert_one_line_error(result, message):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdverify: error: "), result.output
    assert message in lines[0] and "Traceback" not in result.output


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "truncated", "random-bytes", "pickle-runs-code",
                                  "unknown-arch", "wrong-shapes"])
def test_bad_checkpoints_fail_in_one_line(kind, tmp_path, tiny_mnist, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt, message = _bad_checkpoint(kind, tmp_path, tiny_mnist)
    out = tmp_path / "out"
    out.mkdir()
    result = _run_export([str(ckpt), "--out", str(out / "m.onnx"), "--quantize", "int8"])
    _assert_one_line_error(result, message)
    assert _leftovers(out) == [] and not (tmp_path / "exports").exists()
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("case,message", [
    ("missing-folder", "does not exist"),
    ("out-is-directory", "is a directory"),
    ("exists", "exists; pass --force"),
    ("int8-exists", "exists; pass --force"),
    ("unwritable-folder", "not writable"),
    ("opset-too-old", "opset 7 is not supported"),
    ("opset-too-new", "opset 99 is not supported"),
])
def test_bad_outputs_and_options_fail_in_one_line(case, message, mlp_ckpt, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, extra = out_dir / "m.onnx", []
    if case == "missing-folder":
        out = tmp_path / "missing" / "m.onnx"
    elif case == "out-is-directory":
        out.mkdir()
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "int8-exists":
        (out_dir / "m.int8.onnx").write_bytes(b"keep me")
        extra = ["--quantize", "int8"]
    elif case == "unwritable-folder":
        if os.geteuid() == 0:  # root writes through permission bits; /proc refuses new files even to root
            out = Path("/proc/m.onnx")
            message = "cannot write to /proc"
        else:
            out_dir.chmod(0o500)
    else:
        extra = ["--opset", {"opset-too-old": "7", "opset-too-new": "99"}[case]]
    try:
        result = _run_export([str(mlp_ckpt), "--out", str(out), *extra])
    finally:
        out_dir.chmod(0o700)
    _assert_one_line_error(result, message)
    kept = {"exists": ["m.onnx"], "int8-exists": ["m.int8.onnx"], "out-is-directory": ["m.onnx"]}.get(case, [])
    assert _leftovers(out_dir) == kept
    for name in kept:
        assert (out_dir / name).is_dir() or (out_dir / name).read_bytes() == b"keep me"
    assert not (tmp_path / "missing").exists()


def test_force_overwrites(mlp_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    result = _run_export([str(mlp_ckpt), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(str(out))
    assert "test errors not measured (no real data)" in result.output.strip().splitlines()[-1]
