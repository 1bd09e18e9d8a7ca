import gzip
import hashlib
import pickle

import numpy as np
import pytest
import torch

from kdverify import data
from kdverify.data import (Split, augment, balanced_subset, filter_classes, iterate_batches, load_cifar10, load_mnist,
                           normalize, random_flip, random_translate, resolve_data_root, split_holdout)
from kdverify.errors import DataError


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("KDVERIFY_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("KDVERIFY_DATA")
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "cache"))
    assert resolve_data_root() == tmp_path / "cache" / "data"


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), expected)


def test_translate_is_an_integer_shift_with_zero_fill():
    x = torch.randint(1, 256, (64, 1, 28, 28), dtype=torch.uint8)
    y = random_translate(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8
    for b in range(64):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(torch.nn.functional.pad(x[b], (2, 2, 2, 2))[:, 2 + dy:30 + dy, 2 + dx:30 + dx], y[b])]
        assert len(matches) == 1
    # every one of the 25 shifts occurs over a large batch
    big = torch.randint(1, 256, (2000, 1, 8, 8), dtype=torch.uint8)
    shifted = random_translate(big, 2, torch.Generator().manual_seed(1))
    zero_rows = (shifted == 0).all(dim=3).sum(dim=(1, 2))
    zero_cols = (shifted == 0).all(dim=2).sum(dim=(1, 2))
    assert set(zero_rows.tolist()) == {0, 1, 2} and set(zero_cols.tolist()) == {0, 1, 2}


def test_flip_and_named_augmentations():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4).repeat(50, 1, 1, 1)
    y = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (y == x.flip(3)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 20 < int(flipped.sum()) < 80
    assert augment(x, "none") is x
    assert augment(x, "crop4-flip", torch.Generator().manual_seed(0)).shape == x.shape
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(x, "rotate")


def test_filters_holdout_subset_and_batches():
    labels = torch.arange(100) % 10
    split = Split(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels)
    assert set(filter_classes(split, drop=[3]).labels.tolist()) == set(range(10)) - {3}
    assert set(filter_classes(split, keep=[7, 8]).labels.tolist()) == {7, 8}
    train, held = split_holdout(split, 20)
    assert len(train) == 80 and len(held) == 20 and torch.equal(held.labels, labels[80:])
    sub = balanced_subset(split, 50, 10)
    assert len(sub) == 50 and torch.bincount(sub.labels).tolist() == [5] * 10
    seen = torch.cat([idx for idx, _, _ in iterate_batches(split, 32, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(100))


def _write_idx(path, array, gz):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return payload


def test_mnist_reader_checks_checksums(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    digests = {}
    for prefix, n in [("train", 30), ("t10k", 10)]:
        payload = _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
        digests[f"{prefix}-images-idx3-ubyte"] = hashlib.md5(payload).hexdigest()
        payload = _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), gz=False)
        digests[f"{prefix}-labels-idx1-ubyte"] = hashlib.md5(payload).hexdigest()
    with pytest.raises(DataError, match="fails its checksum"):
        load_mnist(tmp_path)  # synthetic bytes are not canonical MNIST
    monkeypatch.setattr(data, "MNIST_MD5", digests)
    ds = load_mnist(tmp_path)
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.test.labels.shape == (10,)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00")  # truncated
    with pytest.raises(DataError, match="t10k-labels"):
        load_mnist(tmp_path)


def test_missing_data_names_files_and_places(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*not found in .*MNIST"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*cifar10-jpeg-q75.tar.gz"):
        load_cifar10(tmp_path)


def test_cifar_batches_refuse_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = pickle.dumps({b"data": Evil()})
    unpickler = data._NumpyOnlyUnpickler(__import__("io").BytesIO(payload), encoding="bytes")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        unpickler.load()
