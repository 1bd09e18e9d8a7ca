import os
import pickle

import pytest
import torch

from kdverify.cache.checkpoint import (
    checkpoint_payload,
    load_checkpoint,
    machine_description,
    payload_seal,
    save_checkpoint,
    state_digest,
)
from kdverify.errors import CheckpointError
from kdverify.train.models import HintonMLP, LightNN, build_model


def _payload(tiny_mnist, model=None, **kw):
    model = model or HintonMLP(hidden=16)
    return checkpoint_payload(model, "hinton_mlp", {"hidden": 16}, tiny_mnist, {"name": "x"}, {"errors": 3}, **kw)


def test_round_trip_rebuilds_model_without_pickled_classes(tiny_mnist, tmp_path):
    model = HintonMLP(hidden=16).eval()
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist, model))
    ckpt = load_checkpoint(path)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(ckpt.model(x), model(x))
    assert ckpt.arch == "hinton_mlp" and ckpt.arch_kwargs == {"hidden": 16}
    assert ckpt.mean == (0.5,) and ckpt.input_shape == (1, 28, 28) and ckpt.classes[3] == "3"
    assert ckpt.metrics == {"errors": 3} and ckpt.recipe == {"name": "x"} and "torch" in ckpt.versions
    assert len(ckpt.sha256) == 64
    # loads under the strictest loader: no custom classes inside
    torch.load(path, weights_only=True)


def test_no_overwrite_without_force_and_atomic(tiny_mnist, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _payload(tiny_mnist))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="exists; pass --force"):
        save_checkpoint(path, _payload(tiny_mnist))
    assert path.read_bytes() == before
    save_checkpoint(path, _payload(tiny_mnist), force=True)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (os.urandom(512), "not a readable checkpoint"),
    (pickle.dumps({"format": "kdverify-checkpoint", "x": _RunsCode()}), "not a readable checkpoint"),
    ("torch.save", "it contains pickled code or classes, refused under weights_only=True"),
    (b"# README\nnot a model\n", "not a readable checkpoint: not a PyTorch checkpoint file"),  # a text file
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the hostile pickle, on purpose
def test_bad_files_fail_cleanly(tmp_path, content, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.pt"
    if content == "torch.save":  # a real torch file whose pickle names a function to call
        torch.save({"format": "kdverify-checkpoint", "x": _RunsCode()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_missing_dir_foreign_and_mismatched(tiny_mnist, tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _payload(tiny_mnist))
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a kdverify checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    payload = _payload(tiny_mnist)
    payload["arch"] = "resnet50"
    payload["payload_sha256"] = payload_seal(payload)  # self-consistent: a producer that wrote a bad arch
    save_checkpoint(tmp_path / "arch.pt", payload)
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet50'"):
        load_checkpoint(tmp_path / "arch.pt")
    payload = checkpoint_payload(LightNN(), "hinton_mlp", {"hidden": 16}, tiny_mnist)
    save_checkpoint(tmp_path / "shapes.pt", payload)
    with pytest.raises(CheckpointError, match="weights do not fit hinton_mlp"):
        load_checkpoint(tmp_path / "shapes.pt")


def test_state_digest_names_the_weights_themselves(tiny_mnist, tmp_path):
    torch.manual_seed(0)
    a = HintonMLP(hidden=16)
    torch.manual_seed(0)
    b = HintonMLP(hidden=16, input_dropout=0.5)  # dropout has no weights: same digest
    assert state_digest(a) == state_digest(b) and len(state_digest(a)) == 64
    path = save_checkpoint(tmp_path / "a.pt", _payload(tiny_mnist, a))
    assert state_digest(load_checkpoint(path).model) == state_digest(a)  # survives a save and load
    with torch.no_grad():
        b.output_layer.bias[3] = torch.nextafter(b.output_layer.bias[3], torch.tensor(1.0))  # one ulp
    assert state_digest(b) != state_digest(a)
    assert state_digest(HintonMLP(hidden=16).double()) != state_digest(HintonMLP(hidden=16))  # dtype counts


def test_machine_description_names_the_cpu():
    text = machine_description("cpu")
    assert f"{os.cpu_count()} CPUs" in text and f"{torch.get_num_threads()} threads" in text


def _rewrite(path, edit, reseal=True):
    """Edit a saved checkpoint; resealed by default, as a producer that wrote bad values would have sealed them."""
    payload = torch.load(path, weights_only=True)
    edit(payload)
    if reseal:
        payload["payload_sha256"] = payload_seal(payload)
    path.write_bytes(_serialise(payload))


def _serialise(payload):
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def test_bit_rotted_weights_are_refused_on_load(tiny_mnist, tmp_path):
    """A flipped bit inside a weight leaves a loadable file: only the recorded content hash can catch it."""
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    weights = load_checkpoint(path).model.state_dict()["features.2.weight"].numpy().tobytes()
    blob = bytearray(path.read_bytes())
    at = bytes(blob).find(weights[:64])
    blob[at + 64] ^= 0x40
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="weights do not match their recorded sha256.*corrupt or was modified"):
        load_checkpoint(path)


def test_every_checkpoint_carries_the_hash_of_its_tensors(tiny_mnist, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    ckpt = load_checkpoint(path)
    assert ckpt.weights_sha256 == state_digest(ckpt.model) and len(ckpt.weights_sha256) == 64
    assert ckpt.dataset == tiny_mnist.name
    _rewrite(path, lambda p: p.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match="do not match their recorded sha256 \\(None\\)"):
        load_checkpoint(path)  # a format-2 file without its hash is not trusted either


@pytest.mark.parametrize("edit,match", [
    (lambda p: p["arch_kwargs"].update(hidden=-5), "bad constructor arguments for hinton_mlp"),
    (lambda p: p["arch_kwargs"].update(hidden=10 ** 7), "weights do not fit hinton_mlp"),
    (lambda p: p["arch_kwargs"].update(bogus=1), "bad constructor arguments"),
    (lambda p: p.update(arch_kwargs=[1, 2]), "field 'arch_kwargs' must be a mapping"),
    (lambda p: p.update(input_shape=[3, 32, 32]), "does not accept its recorded input shape \\[3, 32, 32\\]"),
    (lambda p: p.update(input_shape=[1, -28, 28]), "field 'input_shape' must be a list of positive integers"),
    (lambda p: p.update(input_shape="x"), "field 'input_shape' must be a list of positive integers"),
    (lambda p: p.update(classes=["a", "b"]), "has 10 outputs but 2 classes are recorded"),
    (lambda p: p.update(state_dict=None), "no weights"),
])
def test_malformed_checkpoints_are_one_line_errors_before_anything_is_allocated(tiny_mnist, tmp_path, edit, match):
    """hidden=10**7 would ask for ~30 GB: the shapes are compared on the meta device first."""
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist, model=build_model("hinton_mlp", hidden=16)))
    _rewrite(path, edit)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_unknown_architecture_names_the_fix(tiny_mnist, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    _rewrite(path, lambda p: p.update(arch="resnet_tiny"))
    with pytest.raises(CheckpointError,
                       match="unknown architecture 'resnet_tiny'.*--import MODULE.*install the package"):
        load_checkpoint(path)


def test_checkpoints_get_ordinary_permissions_like_exports(tiny_mnist, tmp_path):
    """mkstemp makes 0600 files; a checkpoint is shared like any other file (0666 minus the umask)."""
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_state_digest_covers_zero_dim_buffers_and_keeps_old_digests():
    """BatchNorm's num_batches_tracked is a 0-dim int64: it must hash (a user's model has one)."""
    bn = torch.nn.BatchNorm2d(4)
    first = state_digest(bn)
    bn.num_batches_tracked += 1
    assert state_digest(bn) != first
    # the pinned MNIST teacher's digest, computed before 0-dim tensors were handled, is unchanged
    from kdverify.cache.manifest import read_manifest
    from kdverify.paths import TEACHERS_DIR

    teacher = load_checkpoint(TEACHERS_DIR / "hinton-teacher.pt")
    assert state_digest(teacher.model) == read_manifest()["hinton-teacher"]["weights_sha256"]


@pytest.mark.parametrize("edit", [
    lambda p: p["normalization"].update(mean=[0.125]),
    lambda p: p["metrics"].update(errors=0),
    lambda p: p["classes"].reverse(),
    lambda p: p["recipe"].update(name="y"),
], ids=["normalisation", "metrics", "classes", "recipe"])
def test_a_changed_bit_of_metadata_is_refused_like_a_changed_weight(tiny_mnist, tmp_path, edit):
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    _rewrite(path, edit, reseal=False)
    with pytest.raises(CheckpointError, match="metadata .* does not match its recorded sha256"):
        load_checkpoint(path)


def test_older_formats_without_a_seal_are_refused_unless_verified_otherwise(tiny_mnist, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    _rewrite(path, lambda p: (p.pop("payload_sha256"), p.update(format_version=2)), reseal=False)
    with pytest.raises(CheckpointError, match="format 2 .*not covered by a digest.*train it again"):
        load_checkpoint(path)
    assert load_checkpoint(path, accept_unsealed=True).weights_sha256  # the cache re-measures such a model
    _rewrite(path, lambda p: p.update(format_version="abc"), reseal=False)
    with pytest.raises(CheckpointError, match="m.pt: format_version 'abc' is not a number"):
        load_checkpoint(path)


@pytest.mark.parametrize("field,value,message", [
    ("input_shape", None, "field 'input_shape' must be a list of positive integers"),
    ("normalization", [0.5], "field 'normalization' must be a mapping of mean and std lists"),
    ("normalization", {"mean": [None], "std": [0.5]}, "field 'normalization' must be a mapping"),
    ("classes", "0123456789", "field 'classes' must be a list of class names"),
    ("metrics", [], "field 'metrics' must be a mapping"),
])
def test_malformed_fields_are_one_line_errors_naming_the_field(tiny_mnist, tmp_path, field, value, message):
    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    _rewrite(path, lambda p: p.__setitem__(field, value))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_checkpoint_that_does_not_fit_the_data_it_names_is_one_line(tiny_mnist, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kdverify import data as data_module
    from kdverify.cli import main

    path = save_checkpoint(tmp_path / "m.pt", _payload(tiny_mnist))
    _rewrite(path, lambda p: p.update(dataset="cifar10"))
    cifar_like = tiny_mnist.__class__(**{**vars(tiny_mnist), "name": "cifar10", "train": tiny_mnist.train,
                                         "test": type(tiny_mnist.test)(torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
                                                                       torch.zeros(4, dtype=torch.long))})
    monkeypatch.setattr(data_module, "load_dataset", lambda name, root=None, device="cpu": cifar_like)
    result = CliRunner().invoke(main, ["evaluate", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "m.pt has 10 classes and inputs (1, 28, 28); 'cifar10' (synthetic) has 10 classes and inputs (3, 32, 32)" \
        in result.output
