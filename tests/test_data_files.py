"""Reading dataset files: missing vs corrupt, broken gzip streams, and the self-healing CIFAR JPEG cache.

Everything runs on tiny synthetic files (the md5 tables are monkeypatched), so no real data is needed.
"""

import gzip
import hashlib
import io
import multiprocessing
import os
import pathlib
import tarfile
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from kdverify.claims.core import Threshold
from kdverify.data import cifar, load_cifar10, load_mnist, mnist
from kdverify.errors import DataCorrupt, DataMissing

# ---------------------------------------------------------------- helpers


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()


def _fake_mnist(root: pathlib.Path, monkeypatch, n_train: int = 30, n_test: int = 10) -> dict[str, bytes]:
    """MNIST-shaped IDX files, images gzipped, labels plain; MNIST_MD5 patched to accept them.

    Pixels are mostly zero with a few strokes (like MNIST), so deflate uses Huffman blocks where a
    flipped bit breaks the stream itself (zlib.error), not only the CRC.
    """
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    payloads, digests = {}, {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.where(rng.random((n, 28, 28)) < 0.2, rng.integers(128, 256, (n, 28, 28)), 0)
        for name, array, packed in ((f"{prefix}-images-idx3-ubyte", images, True),
                                    (f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), False)):
            payload = _idx(array)
            target = raw / (name + ".gz" if packed else name)
            target.write_bytes(gzip.compress(payload, mtime=0) if packed else payload)
            payloads[name], digests[name] = payload, hashlib.md5(payload).hexdigest()
    monkeypatch.setattr(mnist, "MNIST_MD5", digests)
    return payloads


def _jpeg_bytes(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    if payload is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload) if payload is not None else None)


def _fake_jpeg_tar(root: pathlib.Path, monkeypatch, sizes: dict[str, int] | None = None,
                   classes: tuple[str, ...] = ("airplane", "cat", "truck"), corrupt_one: bool = False) -> pathlib.Path:
    """A tiny cifar10-jpeg-q75.tar.gz (real JPEGs, the real layout); md5 and sizes patched to accept it."""
    sizes = sizes or {"train": 6, "test": 3}
    path = root / cifar.CIFAR_JPEG_TAR
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(1)
    labels = []
    with tarfile.open(path, "w:gz") as tar:
        for split, n in sizes.items():
            _add(tar, split, None)
            for i in range(n):
                payload = _jpeg_bytes(rng)
                if corrupt_one and i == n - 1:
                    payload = payload[:len(payload) // 3]  # a truncated JPEG
                _add(tar, f"{split}/{classes[i % len(classes)]}/{i:04d}.jpg", payload)
                cls = classes[i % len(classes)]
                labels.append(cifar.CIFAR_CLASSES.index(cls) if cls in cifar.CIFAR_CLASSES else -1)
    monkeypatch.setattr(cifar, "CIFAR_JPEG_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    monkeypatch.setattr(cifar, "CIFAR_JPEG_LABELS_SHA256",  # the source's labels, as the real constant is
                        hashlib.sha256(np.asarray(labels, np.int64).tobytes()).hexdigest())
    monkeypatch.setattr(cifar, "CIFAR_JPEG_SIZES", dict(sizes))
    return path


def _cache_file(cache: pathlib.Path) -> pathlib.Path:
    return cache / f"cifar10-jpeg-q75-{cifar.CIFAR_JPEG_MD5[:12]}.npz"


def _reference(tar: pathlib.Path) -> dict[str, np.ndarray]:
    return cifar._decode_jpeg_tar(tar)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


# ---------------------------------------------------------------- task 1: DataMissing vs DataCorrupt


def test_absent_files_raise_data_missing_naming_file_and_fix(tmp_path):
    with pytest.raises(DataMissing, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*MNIST.*--data-root") as e:
        load_mnist(tmp_path)
    _one_line(e)
    with pytest.raises(DataMissing, match=r"cifar-10-batches-py.*cifar10-jpeg-q75\.tar\.gz.*--data-root") as e:
        load_cifar10(tmp_path)
    _one_line(e)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataMissing, match=r"data_batch_1 not found"):
        load_cifar10(tmp_path)


def test_checksum_failures_raise_data_corrupt_naming_file_and_fix(tmp_path, monkeypatch):
    _fake_mnist(tmp_path, monkeypatch)
    monkeypatch.setattr(mnist, "MNIST_MD5", dict.fromkeys(mnist.MNIST_MD5, "0" * 32))
    with pytest.raises(DataCorrupt, match=r"train-images-idx3-ubyte.*fails its checksum.*download it again") as e:
        load_mnist(tmp_path)
    _one_line(e)

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in cifar.CIFAR_BATCH_MD5:
        (batches / name).write_bytes(b"not a pickle")
    with pytest.raises(DataCorrupt, match=r"data_batch_1 fails its checksum.*CIFAR10.*download") as e:
        load_cifar10(tmp_path)
    _one_line(e)


def test_jpeg_tar_failing_its_checksum_is_corrupt(tmp_path, monkeypatch):
    tar = _fake_jpeg_tar(tmp_path, monkeypatch)
    monkeypatch.setattr(cifar, "CIFAR_JPEG_MD5", "0" * 32)
    with pytest.raises(DataCorrupt, match=r"cifar10-jpeg-q75\.tar\.gz fails its checksum.*replace it") as e:
        load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    _one_line(e)
    assert tar.is_file()


def test_unreadable_file_is_corrupt_not_missing(tmp_path, monkeypatch):
    _fake_mnist(tmp_path, monkeypatch)
    real_read = pathlib.Path.read_bytes

    def read_bytes(self):  # what chmod 000 does for a non-root user
        if self.name == "t10k-labels-idx1-ubyte":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    with pytest.raises(DataCorrupt, match=r"cannot read .*t10k-labels-idx1-ubyte \(Permission denied\)") as e:
        load_mnist(tmp_path)
    _one_line(e)


def test_cifar_batch_that_passes_its_checksum_but_does_not_unpickle_is_corrupt(tmp_path, monkeypatch):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    digests = {}
    for name in cifar.CIFAR_BATCH_MD5:
        payload = b"\x80\x04garbage"
        (batches / name).write_bytes(payload)
        digests[name] = hashlib.md5(payload).hexdigest()
    monkeypatch.setattr(cifar, "CIFAR_BATCH_MD5", digests)
    with pytest.raises(DataCorrupt, match=r"data_batch_1 cannot be decoded") as e:
        load_cifar10(tmp_path)
    _one_line(e)


@pytest.mark.parametrize("problem, message", [
    ("truncated jpeg", r"cannot be decoded \(OSError: "),  # PIL words it differently across versions
    ("unknown class", r"cannot be decoded \(ValueError: train/unicorn/0001.jpg is not <train\|test>/<CIFAR-10 class>"),
    ("wrong count", r"does not hold the expected images \(train images are uint8 \(6, 3, 32, 32\), expected uint8 "
                    r"\(7, 3, 32, 32\)\)"),
])
def test_jpeg_tar_that_does_not_decode_is_corrupt(tmp_path, monkeypatch, problem, message):
    kwargs = {"truncated jpeg": {"corrupt_one": True}, "unknown class": {"classes": ("airplane", "unicorn")},
              "wrong count": {}}[problem]
    _fake_jpeg_tar(tmp_path, monkeypatch, **kwargs)
    if problem == "wrong count":
        monkeypatch.setattr(cifar, "CIFAR_JPEG_SIZES", {"train": 7, "test": 3})
    with pytest.raises(DataCorrupt, match=r"cifar10-jpeg-q75\.tar\.gz " + message) as e:
        load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    _one_line(e)
    assert not _cache_file(tmp_path / "cache").exists()  # nothing half-decoded is cached


# ---------------------------------------------------------------- task 2: corrupted deflate streams


def test_byte_flips_in_an_mnist_gz_are_data_corrupt_never_a_zlib_traceback(tmp_path, monkeypatch):
    payloads = _fake_mnist(tmp_path, monkeypatch)
    packed = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    original = packed.read_bytes()
    positions = sorted({*range(0, 12), *range(len(original) - 8, len(original)),
                        *np.random.default_rng(2).integers(12, len(original) - 8, 60).tolist()})
    kinds = {"zlib": 0, "gzip": 0, "intact": 0}
    for pos in positions:
        flipped = bytearray(original)
        flipped[pos] ^= 0xFF
        try:
            kinds["intact" if gzip.decompress(bytes(flipped)) == payloads[packed.stem] else "gzip"] += 1
        except zlib.error:
            kinds["zlib"] += 1  # what escaped as a traceback before
        except (OSError, EOFError):
            kinds["gzip"] += 1
        packed.write_bytes(bytes(flipped))
        try:
            ds = load_mnist(tmp_path)
        except DataCorrupt as exc:
            assert "\n" not in str(exc) and "train-images-idx3-ubyte" in str(exc), str(exc)
            assert "download it again" in str(exc)
        else:  # a flip in the gzip header's mtime/flags/OS bytes changes nothing the reader uses
            assert ds.train.images.shape == (30, 1, 28, 28), f"flip at {pos} loaded wrong data"
    assert kinds["zlib"] >= 5, f"the sample should include broken deflate streams: {kinds}"


def test_truncated_mnist_gz_is_data_corrupt(tmp_path, monkeypatch):
    _fake_mnist(tmp_path, monkeypatch)
    packed = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    whole = packed.read_bytes()
    for size in (0, 5, 10, len(whole) // 2, len(whole) - 1):
        packed.write_bytes(whole[:size])
        with pytest.raises(DataCorrupt, match=r"t10k-images-idx3-ubyte"):
            load_mnist(tmp_path)


def test_idx_header_that_lies_about_its_size_is_corrupt(tmp_path, monkeypatch):
    _fake_mnist(tmp_path, monkeypatch)
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    payload = _idx(np.zeros(10))[:-1]  # header says 10 labels, 9 follow
    labels.write_bytes(payload)
    monkeypatch.setitem(mnist.MNIST_MD5, "t10k-labels-idx1-ubyte", hashlib.md5(payload).hexdigest())
    with pytest.raises(DataCorrupt, match=r"t10k-labels-idx1-ubyte is not a uint8 IDX file"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------- task 3: the decoded JPEG cache


def test_jpeg_stand_in_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch, capsys):
    tar = _fake_jpeg_tar(tmp_path, monkeypatch)
    ds = load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert ds.variant == "cifar10-jpeg-q75" and ds.train.images.shape == (6, 3, 32, 32)
    stated = Threshold(">=", 73.69, "tutorial - 1 pt", 72.69, "tutorial - 2 pt")
    assert stated.for_data(ds.variant).value == 72.69  # the variant this loader names is the one claims relax for
    assert ds.train.labels.tolist() == [0, 3, 9] * 2 and ds.test.labels.tolist() == [0, 3, 9]
    assert _cache_file(tmp_path / "cache").is_file() and "decoding" in capsys.readouterr().err
    reference = _reference(tar)
    monkeypatch.setattr(cifar, "_decode_jpeg_tar", lambda path: pytest.fail("decoded again despite a good cache"))
    again = load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert _same(cifar._read_cifar_cache(_cache_file(tmp_path / "cache"))[0], reference)
    assert (again.train.images == ds.train.images).all()


def _corruptions(good: bytes) -> dict[str, bytes]:
    """Ways a cache file goes bad: killed writers (truncation), disk errors (flips), other programs."""
    mid = len(good) // 2
    flip = lambda pos: good[:pos] + bytes([good[pos] ^ 0x55]) + good[pos + 1:]  # noqa: E731
    bad = {"empty": b"", "truncated": good[:mid], "one byte short": good[:-1], "flip in pixels": flip(mid),
           "flip in central directory": flip(len(good) - 30), "flip in first header": flip(26), "text": b"hello\n"}
    for name, arrays in {"wrong shape": {"train_x": np.zeros((7, 3, 32, 32), np.uint8)},
                         "wrong dtype": {"train_x": np.zeros((6, 3, 32, 32), np.float32)},
                         "missing key": {}, "labels out of range": {"test_y": np.full(3, 10, np.int64)}}.items():
        with np.load(io.BytesIO(good)) as npz:
            base = {k: npz[k] for k in npz.files}
        if name == "missing key":
            base.pop("test_y")
        buffer = io.BytesIO()
        np.savez(buffer, **{**base, **arrays})
        bad[name] = buffer.getvalue()
    return bad


def test_every_kind_of_broken_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    tar = _fake_jpeg_tar(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    load_cifar10(tmp_path, cache_dir=cache)
    cached = _cache_file(cache)
    good, reference = cached.read_bytes(), _reference(tar)
    for name, payload in _corruptions(good).items():
        cached.write_bytes(payload)
        ds = load_cifar10(tmp_path, cache_dir=cache)
        assert np.array_equal(ds.train.images.numpy(), reference["train_x"]), name
        assert np.array_equal(ds.test.labels.numpy(), reference["test_y"]), name
        assert _same(cifar._read_cifar_cache(cached)[0], reference), f"{name}: cache not repaired"
        assert "does not read back" in capsys.readouterr().err, name
    assert not list(cache.glob(".*.tmp")), "temporaries left behind"


def test_bad_crc_in_the_cache_is_rebuilt(tmp_path, monkeypatch):
    """The exact failure that used to need a manual delete: zipfile.BadZipFile 'Bad CRC-32'."""
    tar = _fake_jpeg_tar(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    load_cifar10(tmp_path, cache_dir=cache)
    cached = _cache_file(cache)
    good = bytearray(cached.read_bytes())
    good[len(good) // 2] ^= 1
    cached.write_bytes(bytes(good))
    with pytest.raises(Exception, match="Bad CRC-32"), np.load(cached) as npz:
        [npz[k] for k in npz.files]
    assert "Bad CRC-32" in cifar._read_cifar_cache(cached)[1]
    assert _same(cifar._cifar_jpeg_arrays(tar, cache), _reference(tar))


def test_cache_reader_never_raises_whatever_byte_is_flipped(tmp_path, monkeypatch):
    tar = _fake_jpeg_tar(tmp_path, monkeypatch, sizes={"train": 2, "test": 1})
    cache = tmp_path / "cache"
    cifar._cifar_jpeg_arrays(tar, cache)
    cached, reference = _cache_file(cache), _reference(tar)
    good = cached.read_bytes()
    # every byte of the zip and npy headers and the central directory, a sample of the pixels
    positions = sorted({*range(0, 400), *range(len(good) - 700, len(good)), *range(400, len(good) - 700, 37)})
    accepted = 0
    for pos in positions:
        for mask in (0x01, 0x80):
            flipped = bytearray(good)
            flipped[pos] ^= mask
            cached.write_bytes(bytes(flipped))
            arrays, why = cifar._read_cifar_cache(cached)
            if arrays is not None:  # an unused field (timestamp, comment length...) was hit: data unchanged
                assert _same(arrays, reference), f"flip {mask:#x} at {pos} accepted changed data"
                accepted += 1
            else:
                assert why and "\n" not in why
    assert accepted < len(positions), "the sample should mostly hit bytes that matter"


def test_rebuild_renames_over_the_old_file_so_readers_keep_theirs(tmp_path, monkeypatch):
    tar = _fake_jpeg_tar(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    cifar._cifar_jpeg_arrays(tar, cache)
    cached = _cache_file(cache)
    cached.write_bytes(cached.read_bytes()[:100])
    before = os.stat(cached).st_ino
    with open(cached, "rb") as reader:  # another process mid-read of the old file
        cifar._cifar_jpeg_arrays(tar, cache)
        assert len(reader.read()) == 100, "the old file was overwritten in place"
    assert os.stat(cached).st_ino != before
    assert _same(cifar._read_cifar_cache(cached)[0], _reference(tar))


def test_without_a_usable_lock_the_stand_in_still_loads(tmp_path, monkeypatch, capsys):
    _fake_jpeg_tar(tmp_path, monkeypatch)

    def no_lock(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cifar, "exclusive", no_lock)  # e.g. a read-only cache folder
    ds = load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert ds.train.images.shape == (6, 3, 32, 32)
    assert "decoding cifar10-jpeg-q75.tar.gz without caching it" in capsys.readouterr().err


def _decode_in_child(tar, cache, counter, barrier, results) -> None:
    real = cifar._decode_jpeg_tar

    def counted(path):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # widen the window in which the others would also start decoding
        return real(path)

    cifar._decode_jpeg_tar = counted
    barrier.wait()
    arrays = cifar._cifar_jpeg_arrays(tar, cache)
    results.put(hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest())


@pytest.mark.processes
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@pytest.mark.parametrize("state", ["absent", "corrupt"])
def test_concurrent_processes_decode_once(tmp_path, monkeypatch, state):
    tar = _fake_jpeg_tar(tmp_path, monkeypatch)  # patched constants are inherited by forked children
    cache, counter = tmp_path / "cache", tmp_path / "decodes"
    if state == "corrupt":
        cache.mkdir()
        _cache_file(cache).write_bytes(b"PK\x03\x04 half a zip")
    ctx = multiprocessing.get_context("fork")
    n = 3
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_decode_in_child, args=(tar, cache, counter, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    digests = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1, "more than one process decoded"
    assert len(set(digests)) == 1
    assert _same(cifar._read_cifar_cache(_cache_file(cache))[0], _reference(tar))


@pytest.mark.parametrize("tamper", ["shifted-labels", "first-image"])
def test_a_well_formed_decoded_copy_that_is_not_the_sources_is_decoded_again(tmp_path, monkeypatch, tamper):
    """Shape, dtype and label range all fine, and still wrong: the labels are checked against the source's
    digest and the first images against a fresh decode, so such a copy is never used."""
    tar = _fake_jpeg_tar(tmp_path / "data", monkeypatch)
    reference = _reference(tar)
    cached = _cache_file(tmp_path / "cache")
    bad = {k: v.copy() for k, v in reference.items()}
    if tamper == "shifted-labels":
        bad["train_y"] = (bad["train_y"] + 1) % len(cifar.CIFAR_CLASSES)
    else:
        bad["train_x"][0] ^= 1
    cached.parent.mkdir(parents=True)
    np.savez(cached, **bad)
    assert cifar._cifar_arrays_problem(bad) is None  # what the old check looked at
    loaded = cifar.load_cifar10(tmp_path / "data", tmp_path / "cache")
    assert np.array_equal(loaded.train.labels.numpy(), reference["train_y"])
    assert np.array_equal(loaded.train.images.numpy(), reference["train_x"])
    assert _same(cifar._read_cifar_cache(cached, tar)[0], reference)  # and the copy was replaced
