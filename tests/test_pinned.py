"""Pinned teachers: pinned into a temporary folder, loaded back, and refused when altered or stale."""

import dataclasses
import io
import json

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
from kdverify.cache.manifest import MANIFEST, read_manifest
from kdverify.cache.pinned import is_pinned, load_pinned, pin_teacher
from kdverify.errors import CheckpointError, KdverifyError
from kdverify.train.loop import TRAINER_VERSION, fit
from kdverify.train.metrics import predict_logits
from kdverify.train.recipes import Recipe

RECIPE = Recipe("tiny-teacher", "mnist", "hinton_mlp", arch_kwargs={"hidden": 16}, epochs=1, lr=0.05, momentum=0.9,
                batch_size=100, note="pinned by a test")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mnist):
    """A trained checkpoint of RECIPE, as `kdverify train` writes it, and its training result."""
    result = fit(RECIPE, tiny_mnist, progress=None)
    metrics = {"test": result.evaluation.to_dict(), "train_seconds": result.seconds, "machine": machine_description()}
    path = save_checkpoint(tmp_path_factory.mktemp("trained") / "teacher.pt",
                           checkpoint_payload(result.model, RECIPE.arch, RECIPE.arch_kwargs, tiny_mnist,
                                              RECIPE.to_dict(), metrics))
    return path, result


def _pin(trained, folder, **kwargs):
    return pin_teacher(trained[0], RECIPE, TRAINER_VERSION, "test machine", folder=folder, **kwargs)


def test_pin_then_load_gives_the_same_model_and_a_full_record(trained, tmp_path, tiny_mnist):
    path, result = trained
    folder = tmp_path / "teachers"
    assert read_manifest(folder) == {} and not is_pinned(RECIPE.name, folder)
    entry = _pin(trained, folder)
    assert is_pinned(RECIPE.name, folder) and (folder / "tiny-teacher.pt").read_bytes() == path.read_bytes()
    assert json.loads((folder / MANIFEST).read_text())["teachers"][RECIPE.name] == entry
    assert entry["file"] == "tiny-teacher.pt" and entry["sha256"] == load_checkpoint(path).sha256
    assert entry["weights_sha256"] == state_digest(result.model)
    assert entry["fingerprint"] == RECIPE.fingerprint() and entry["recipe"] == RECIPE.to_dict()
    assert entry["trainer_version"] == TRAINER_VERSION and entry["machine"] == "test machine"
    assert entry["test_errors"] == result.evaluation.errors and entry["test_total"] == len(tiny_mnist.test)
    assert entry["data_variant"] == "synthetic" and entry["torch"] == torch.__version__

    ckpt = load_pinned(RECIPE, "cpu", folder)
    assert ckpt.sha256 == entry["sha256"] and state_digest(ckpt.model) == entry["weights_sha256"]
    torch.testing.assert_close(predict_logits(ckpt.model, tiny_mnist.test, tiny_mnist.mean, tiny_mnist.std),
                               predict_logits(result.model, tiny_mnist.test, tiny_mnist.mean, tiny_mnist.std),
                               rtol=0, atol=0)
    # the note is free text, not part of the recipe: a reworded note still loads
    load_pinned(dataclasses.replace(RECIPE, note="reworded"), "cpu", folder)


def test_a_flipped_byte_is_a_sha256_mismatch(trained, tmp_path):
    folder = tmp_path / "teachers"
    _pin(trained, folder)
    pinned = folder / "tiny-teacher.pt"
    blob = bytearray(pinned.read_bytes())
    weights = load_checkpoint(pinned).model.state_dict()["features.2.weight"].numpy().tobytes()
    at = bytes(blob).find(weights[:64])
    assert at > 0
    blob[at + 100] ^= 0x01  # one bit of one weight: the file still loads as a checkpoint
    pinned.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"weights do not match their recorded sha256"):
        load_checkpoint(pinned)  # the checkpoint's own content hash catches it, pinned or not
    with pytest.raises(CheckpointError, match=r"weights do not match their recorded sha256"):
        load_pinned(RECIPE, "cpu", folder)


def test_a_substituted_valid_checkpoint_is_a_manifest_mismatch(trained, tmp_path):
    folder = tmp_path / "teachers"
    _pin(trained, folder)
    pinned = folder / "tiny-teacher.pt"
    ckpt = load_checkpoint(pinned)
    with torch.no_grad():
        ckpt.model.features[2].weight.add_(1e-3)  # a self-consistent file, but not the pinned one
    payload = torch.load(pinned, weights_only=True)
    payload["state_dict"] = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    payload["weights_sha256"] = state_digest(payload["state_dict"])
    payload["payload_sha256"] = payload_seal(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    pinned.write_bytes(buffer.getvalue())
    assert load_checkpoint(pinned).sha256 != read_manifest(folder)[RECIPE.name]["sha256"]
    with pytest.raises(CheckpointError, match=r"sha256 [0-9a-f]{16} does not match the manifest's [0-9a-f]{16}"):
        load_pinned(RECIPE, "cpu", folder)


def test_a_changed_recipe_refuses_the_pinned_teacher(trained, tmp_path):
    folder = tmp_path / "teachers"
    _pin(trained, folder)
    changed = dataclasses.replace(RECIPE, lr=0.1)
    with pytest.raises(KdverifyError, match=f"trained with recipe {RECIPE.fingerprint()}.*now "
                                            f"{changed.fingerprint()}.*re-pin") as info:
        load_pinned(changed, "cpu", folder)
    assert not isinstance(info.value, CheckpointError)
    with pytest.raises(KdverifyError, match="no pinned teacher for 'other'; pinned: tiny-teacher"):
        load_pinned(dataclasses.replace(RECIPE, name="other"), "cpu", folder)


def test_pinning_twice_needs_force_and_only_the_matching_recipe_pins(trained, tmp_path):
    folder = tmp_path / "teachers"
    first = _pin(trained, folder)
    manifest = (folder / MANIFEST).read_bytes()
    with pytest.raises(KdverifyError, match="tiny-teacher is already pinned; pass --force"):
        _pin(trained, folder)
    assert (folder / MANIFEST).read_bytes() == manifest
    assert _pin(trained, folder, force=True) == first
    with pytest.raises(KdverifyError, match="was trained by recipe 'tiny-teacher', not 'other'"):
        pin_teacher(trained[0], dataclasses.replace(RECIPE, name="other"), TRAINER_VERSION, "m", folder=folder)
    with pytest.raises(KdverifyError, match="was trained with recipe"):
        pin_teacher(trained[0], dataclasses.replace(RECIPE, epochs=2), TRAINER_VERSION, "m", folder=folder)
    assert list(read_manifest(folder)) == ["tiny-teacher"]


def test_an_unreadable_manifest_is_one_clear_error(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(KdverifyError, match="is not a readable teacher manifest"):
        read_manifest(tmp_path)


def test_a_manifest_entry_without_its_file_is_one_line(tmp_path):
    folder = tmp_path / "teachers"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"teachers": {"tiny-teacher": {"sha256": "ab", "fingerprint": "cd"}}}))
    with pytest.raises(KdverifyError, match="entry 'tiny-teacher' lacks file: the manifest was edited"):
        load_pinned(RECIPE, "cpu", folder)


def test_pin_into_a_place_that_cannot_hold_it_is_one_line(trained, tmp_path):
    (tmp_path / "a-file").write_text("x")  # unwritable even for root: a folder cannot be made inside a file
    with pytest.raises(KdverifyError, match="cannot pin into .*a-file/teachers"):
        _pin(trained, tmp_path / "a-file" / "teachers")
