"""The public data API: registering datasets, Dataset.from_tensors, balanced_subset."""

import pytest
import torch

from kdverify import data
from kdverify.data import Dataset, Split, balanced_subset, load_dataset, register_dataset
from kdverify.errors import DataError, DataMissing


@pytest.fixture
def registry():
    """The dataset registry (conftest's registries_restored puts it back after each test)."""
    return data.LOADERS


def _tensors(n_train: int = 20, n_test: int = 10, channels: int = 3, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = lambda n: torch.randint(0, 256, (n, channels, 8, 8), dtype=torch.uint8, generator=g)  # noqa: E731
    return image(n_train), torch.arange(n_train) % classes, image(n_test), torch.arange(n_test) % classes


# ---------------------------------------------------------------- task 4: registry


def test_builtins_are_registered_through_the_public_api():
    assert data.LOADERS["mnist"] is data.load_mnist and data.LOADERS["cifar10"] is data.load_cifar10
    assert register_dataset("mnist", data.load_mnist) is data.load_mnist  # the same loader again: a no-op


def test_unknown_dataset_names_the_known_ones_and_how_to_add_one():
    with pytest.raises(DataError) as e:
        load_dataset("svhn")
    text = str(e.value)
    assert "'svhn'" in text and "mnist, cifar10" in text and "\n" not in text
    assert "register it with kdverify.data.register_dataset or --import a module that does" in text
    assert not isinstance(e.value, DataMissing), "a typo must fail, not make claims skip"


def test_registered_loader_is_called_with_the_root_and_moved_to_the_device(registry, tmp_path):
    seen = []

    def load_tiny(root):
        seen.append(root)
        return Dataset.from_tensors("tiny", *_tensors())

    register_dataset("tiny", load_tiny)
    ds = load_dataset("tiny", tmp_path, device="cpu")
    assert seen == [tmp_path] and ds.name == "tiny" and ds.train.images.shape == (20, 3, 8, 8)
    assert "tiny" in registry


def test_registering_a_taken_name_needs_replace(registry):
    first, second = (lambda root: None), (lambda root: None)
    register_dataset("tiny", first)
    with pytest.raises(ValueError, match=r"dataset 'tiny' is already registered .*replace=True"):
        register_dataset("tiny", second)
    assert registry["tiny"] is first
    register_dataset("tiny", second, replace=True)
    assert registry["tiny"] is second
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("mnist", second)
    for bad in ("", " mnist", None):
        with pytest.raises(ValueError, match="dataset name"):
            register_dataset(bad, first)
    with pytest.raises(TypeError, match="callable"):
        register_dataset("other", "not a function")


def test_a_loader_returning_something_else_is_a_one_line_error(registry):
    register_dataset("broken", lambda root: {"train": None})
    with pytest.raises(DataError, match=r"loader of dataset 'broken' .* returned dict, not a kdverify.data.Dataset"):
        load_dataset("broken")


# ---------------------------------------------------------------- task 5: Dataset.from_tensors


def test_from_tensors_defaults():
    train_x, train_y, test_x, test_y = _tensors(classes=4)
    ds = Dataset.from_tensors("toy", train_x, train_y.to(torch.int32), test_x, test_y)
    assert ds.variant == "toy" and ds.classes == ("0", "1", "2", "3") and ds.input_shape == (3, 8, 8)
    assert ds.train.labels.dtype == torch.int64 and len(ds.test) == 10
    x = train_x.double() / 255
    torch.testing.assert_close(torch.tensor(ds.mean, dtype=torch.float64), x.mean((0, 2, 3)))
    torch.testing.assert_close(torch.tensor(ds.std, dtype=torch.float64), x.std((0, 2, 3), unbiased=False))
    assert len(ds.checksum) == 16 and int(ds.checksum, 16) >= 0


def test_from_tensors_checksum_follows_the_bytes_and_normalisation():
    tensors = _tensors()
    base = Dataset.from_tensors("toy", *tensors).checksum
    assert Dataset.from_tensors("renamed", *tensors, variant="v2").checksum == base
    changed = tensors[2].clone()
    changed[0, 0, 0, 0] ^= 1
    assert Dataset.from_tensors("toy", tensors[0], tensors[1], changed, tensors[3]).checksum != base
    assert Dataset.from_tensors("toy", *tensors, mean=(0.5,) * 3, std=(0.5,) * 3).checksum != base
    labels = tensors[1].clone()
    labels[0] = 3 - labels[0]
    assert Dataset.from_tensors("toy", tensors[0], labels, *tensors[2:]).checksum != base


def test_from_tensors_explicit_classes_and_normalisation():
    ds = Dataset.from_tensors("toy", *_tensors(channels=1, classes=2), classes=["cat", "dog", "eel"],
                              mean=[0.5], std=[0.25], variant="toy-v1")
    assert ds.classes == ("cat", "dog", "eel") and ds.mean == (0.5,) and ds.std == (0.25,) and ds.variant == "toy-v1"


@pytest.mark.parametrize("change, message", [
    (lambda t: (t[0].float(), *t[1:]), r"train images must be uint8 \(N, C, H, W\), or float features \(N, D\) "
                                          r"for tabular data; got torch.float32"),
    (lambda t: (t[0][:, 0], *t[1:]), r"train images must be uint8 \(N, C, H, W\), or float features \(N, D\) for "
                                        r"tabular data; got torch.uint8 \(20, 8, 8\)"),
    (lambda t: (t[0], t[1].float(), *t[2:]), r"train labels must be integer class indices"),
    (lambda t: (t[0], torch.nn.functional.one_hot(t[1]), *t[2:]), r"train labels must be integer .*\(20, 4\)"),
    (lambda t: (*t[:3], t[3][:-1]), r"test split has 10 images and 9 labels"),
    (lambda t: (*t[:3], t[3] - 1), r"test labels must be >= 0, found -1"),
    (lambda t: (t[0], t[1], t[2][..., :4], t[3]), r"train images are \(3, 8, 8\) but test images are \(3, 8, 4\)"),
    (lambda t: (t[0][:0], t[1][:0], *t[2:]), r"train split has 0 images"),
], ids=["float images", "3-d images", "float labels", "one-hot labels", "length mismatch", "negative label",
        "split shapes differ", "empty split"])
def test_from_tensors_rejects_bad_input_in_one_line(change, message):
    with pytest.raises(DataError, match=message) as e:
        Dataset.from_tensors("toy", *change(_tensors()))
    assert "\n" not in str(e.value)


def test_from_tensors_rejects_bad_classes_and_normalisation():
    tensors = _tensors(classes=4)
    with pytest.raises(DataError, match=r"label 3 needs at least 4 classes but 2 are named"):
        Dataset.from_tensors("toy", *tensors, classes=("a", "b"))
    with pytest.raises(DataError, match=r"one value per channel or feature \(3\), got 1 and 3"):
        Dataset.from_tensors("toy", *tensors, mean=(0.5,), std=(0.2,) * 3)
    with pytest.raises(DataError, match=r"std must be positive"):
        Dataset.from_tensors("toy", *tensors, std=(0.2, 0.0, 0.2))
    constant = torch.zeros_like(tensors[0])
    with pytest.raises(DataError, match=r"constant channel"):
        Dataset.from_tensors("toy", constant, *tensors[1:])


# ---------------------------------------------------------------- task 6: balanced_subset


def test_balanced_subset_is_fixed_by_its_seed():
    labels = torch.arange(200) % 10
    split = Split(torch.arange(200), labels)  # train.py passes indices as "images"
    a, b, c = (balanced_subset(split, 50, 10, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    for sub in (a, c):
        assert torch.bincount(sub.labels).tolist() == [5] * 10
        assert torch.equal(sub.images, sub.images.sort().values)  # split order kept
        assert torch.equal(labels[sub.images], sub.labels)


def test_balanced_subset_refuses_to_be_unbalanced():
    split = Split(torch.arange(30), torch.tensor([0] * 20 + [1] * 10))
    with pytest.raises(ValueError, match=r"needs 12 examples of each class, but class 1 has 10"):
        balanced_subset(split, 24, 2)
    with pytest.raises(ValueError, match=r"positive multiple of 2"):
        balanced_subset(split, 15, 2)
    with pytest.raises(ValueError, match=r"positive multiple of 2"):
        balanced_subset(split, 0, 2)
