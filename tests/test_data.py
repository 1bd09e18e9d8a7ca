import gzip
import hashlib
import pickle

import numpy as np
import pytest
import torch

from kdverify.data import (
    AUGMENTATIONS,
    Split,
    augment,
    balanced_subset,
    cifar,
    filter_classes,
    get_augmentation,
    iterate_batches,
    load_cifar10,
    load_mnist,
    mnist,
    normalize,
    split_holdout,
    translate,
)
from kdverify.errors import DataError
from kdverify.paths import data_root as resolve_data_root


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


def _shifted(x, dy, dx, pad):
    """Reference: the image moved so that output[r, c] = input[r + dy, c + dx], zero outside."""
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (pad,) * 4)[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def test_jitter2_variant_v_is_the_shift_v_div_5_minus_2_v_mod_5_minus_2():
    x = torch.randint(1, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    jitter = get_augmentation("jitter2")
    assert jitter.variants == 25
    outputs = []
    for v in range(25):
        y = jitter.apply(x, torch.full((3,), v))
        assert y.dtype == torch.uint8 and y.shape == x.shape
        dy, dx = v // 5 - 2, v % 5 - 2
        assert torch.equal(y, _shifted(x, dy, dx, 2)), f"variant {v} is not the shift {(dy, dx)}"
        assert torch.equal(y, translate(x, torch.full((3,), v // 5), torch.full((3,), v % 5), 2))
        outputs.append(y)
    assert torch.equal(outputs[12], x)  # the middle variant is the identity
    assert len({o.numpy().tobytes() for o in outputs}) == 25  # 25 different images, no two shifts alike
    # per-sample ids: each image of a batch gets its own variant
    ids = torch.tensor([0, 12, 24])
    y = jitter.apply(x, ids)
    for i, v in enumerate(ids.tolist()):
        assert torch.equal(y[i], _shifted(x[i:i + 1], v // 5 - 2, v % 5 - 2, 2)[0])


def test_draw_covers_every_variant_and_the_same_generator_gives_the_same_output():
    for name, variants in (("none", 1), ("jitter2", 25), ("flip", 2), ("crop4-flip", 162)):
        aug = get_augmentation(name)
        assert aug.variants == variants
        ids = aug.draw(20_000, torch.Generator().manual_seed(0))
        assert ids.dtype == torch.int64 and ids.shape == (20_000,)
        counts = torch.bincount(ids, minlength=variants)
        assert len(counts) == variants and bool((counts > 0).all()), f"{name}: some variant is never drawn"
        assert counts.max() < 2 * counts.min() or variants == 1  # roughly uniform
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for name in ("jitter2", "flip", "crop4-flip"):
        a = augment(x, name, torch.Generator().manual_seed(7))
        assert torch.equal(a, augment(x, name, torch.Generator().manual_seed(7)))
        assert not torch.equal(a, augment(x, name, torch.Generator().manual_seed(8)))


def test_flip_variant_one_mirrors_and_crop_flip_shifts_then_mirrors():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    flip = get_augmentation("flip")
    assert torch.equal(flip.apply(x, torch.zeros(4, dtype=torch.int64)), x)
    assert torch.equal(flip.apply(x, torch.ones(4, dtype=torch.int64)), x.flip(3))
    assert torch.equal(flip.apply(x, torch.tensor([0, 1, 1, 0])), torch.stack([x[0], x[1].flip(2), x[2].flip(2), x[3]]))
    crop = get_augmentation("crop4-flip")
    for shift in (0, 40, 80, 3 * 9 + 7):  # shift id = (dy + 4) * 9 + (dx + 4)
        dy, dx = shift // 9 - 4, shift % 9 - 4
        plain = crop.apply(x, torch.full((4,), 2 * shift))
        assert torch.equal(plain, _shifted(x, dy, dx, 4))
        assert torch.equal(crop.apply(x, torch.full((4,), 2 * shift + 1)), plain.flip(3))
    # about half of a drawn batch is mirrored, the rest kept
    many = x.repeat(50, 1, 1, 1)
    y = augment(many, "flip", torch.Generator().manual_seed(0))
    flipped, kept = (y == many.flip(3)).flatten(1).all(1), (y == many).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 70 < int(flipped.sum()) < 130


def test_named_augmentations():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    assert augment(x, "none") is x
    assert set(AUGMENTATIONS) == {"none", "jitter2", "flip", "crop4-flip"}
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
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
    monkeypatch.setattr(mnist, "MNIST_MD5", digests)
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
    unpickler = cifar._NumpyOnlyUnpickler(__import__("io").BytesIO(payload), encoding="bytes")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        unpickler.load()
