"""Fault battery: the categories of issue 18 run against a kdverify tree, as a user runs it.

Every case runs the real console scripts (`kdverify`, `pytest` with the plugin from its entry point) in a
temporary folder, in a subprocess with a timeout, with PYTHONPATH set to the tree under test, so an old
checkout can be measured the same way (`git worktree add /tmp/old f249f35`, then `--tree /tmp/old`).

Outcome of a case:
- OK: what a careful tool does. For a fault: a one-line error (no 'Traceback', no INTERNALERROR) and a
  non-zero exit, before the expensive work where the case says so, with nothing overwritten or executed.
  For a case whose right answer is a verdict (an edited cache entry): the verdict of the true model.
- DEFECT: anything else (a traceback, exit 0 on bad input, a wrong verdict, a file replaced, code run).

    python tools/fault_battery.py --tree . --label head
    python tools/fault_battery.py --tree /tmp/old --label f249f35 --only cli,export

Prints a table (case, category, outcome, the line that says why) and totals, and writes them to
reports/fault-battery/<label>.md. Tiny inputs only: a 600-image synthetic dataset (tests/tiny_project.py),
an MNIST MLP with 16 hidden units on a 1,000-image subset, a CIFAR LightNN on 100 images.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SENTINEL = "FAULT-BATTERY-RAN"


# ---------------------------------------------------------------- running things


@dataclass
class Run:
    rc: int | None  # None: killed at the timeout (or on purpose, when stop_when was seen)
    out: str
    stopped: bool = False  # stop_when was seen and the process was ended there

    @property
    def crashed(self) -> bool:
        return "Traceback (most recent call last)" in self.out or "INTERNALERROR" in self.out

    @property
    def clean_error(self) -> bool:
        """A non-zero exit that says why in a line, not a traceback."""
        return self.rc not in (0, None) and not self.crashed

    def line(self) -> str:
        """The line that says the most: the last error-ish line, else the last non-empty line."""
        lines = [x.strip() for x in self.out.splitlines() if x.strip()]
        if self.crashed:
            tail = [x for x in lines if not x.startswith(("File ", "^", "~"))]
            return "traceback: " + (tail[-1] if tail else "")
        for marker in ("error", "Error", "ERROR", "refus", "FAIL", "warning"):
            hits = [x for x in lines if marker in x and not x.startswith(("Usage:", "Try "))]
            if hits:
                return hits[-1]
        return lines[-1] if lines else "(no output)"


class Battery:
    def __init__(self, tree: Path, data: Path, work: Path, timeout: float) -> None:
        self.tree, self.data, self.work, self.timeout = tree, data, work, timeout
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KDVERIFY_", "PYTEST_"))}
        self.env.update(PYTHONPATH=str(tree), KDVERIFY_DATA=str(data), KDVERIFY_CACHE=str(work / "cache"),
                        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                        HOME=str(work / "home"), XDG_CACHE_HOME=str(work / "home" / ".cache"))
        (work / "home").mkdir(parents=True, exist_ok=True)
        self.proj = work / "proj"
        self.fixtures: dict[str, Path] = {}

    # a case's own folder: the tiny project's module and recipe files in it, nothing else
    def folder(self, name: str) -> Path:
        folder = self.work / "cases" / name
        folder.mkdir(parents=True)
        for f in self.proj.iterdir():
            if f.is_file():
                shutil.copy(f, folder / f.name)
        return folder

    def run(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None,
            stop_when: str | None = None) -> Run:
        full_env = {**self.env, **(env or {})}
        proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + (timeout or self.timeout)
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(65536), b"")),
                                  daemon=True)
        reader.start()
        stopped = False
        while proc.poll() is None and time.monotonic() < deadline:
            if stop_when and stop_when.encode() in b"".join(chunks):
                stopped = True
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        else:
            rc = proc.returncode
        reader.join(timeout=5)
        out = b"".join(chunks).decode(errors="replace")
        return Run(rc, out, stopped or bool(stop_when and stop_when in out and rc is None))

    def kdverify(self, *args: str, cwd: Path, **kw) -> Run:
        return self.run([str(BIN / "kdverify"), *args], cwd, **kw)

    def pytest(self, *args: str, cwd: Path, **kw) -> Run:
        return self.run([str(BIN / "pytest"), "-p", "no:cacheprovider", "-q", "--color=no", *args], cwd, **kw)

    def python(self, code: str, *args: str, cwd: Path) -> Run:
        return self.run([sys.executable, "-c", code, *args], cwd)


# ---------------------------------------------------------------- fixtures (made by the tree under test)

MNIST_TOML = """
[fb-mnist]
dataset = "mnist"
arch = "hinton_mlp"
epochs = 1
lr = 0.1
train_subset = 1000
arch_kwargs = { hidden = 16 }

[fb-eta]
dataset = "mnist"
arch = "hinton_mlp"
epochs = 1
lr = 0.1
arch_kwargs = { hidden = 64 }

[fb-cifar]
dataset = "cifar10"
arch = "light_nn"
epochs = 1
lr = 0.01
optimizer = "adam"
train_subset = 100
"""

CLAIM_TEST = """
import os

from kdverify.claims.core import Claim, Threshold

LIMIT = float(os.environ.get("FB_LIMIT", "100000"))


def test_tiny_hard(kd_claim):
    kd_claim(Claim("fb.tiny_hard", "battery", "tiny hard student", "errors_on_test", {"recipe": "tiny-hard"}, None,
                   "errors", Threshold("<=", LIMIT)))
"""

EDIT = textwrap.dedent('''
    import sys, torch
    src, dst, edit, reseal = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    p = torch.load(src, weights_only=True)

    def flip(p):
        key = next(k for k, v in p["state_dict"].items() if v.is_floating_point() and v.numel())
        t = p["state_dict"][key].clone()
        t.view(-1).view(torch.int32)[0] ^= 1 << 22
        p["state_dict"][key] = t

    if edit == "weights":
        flip(p)
    elif edit == "mean":
        p["normalization"]["mean"] = [0.125 for _ in p["normalization"]["mean"]]
    elif edit == "metrics":
        p["metrics"]["test"]["errors"] = 4242
    elif edit == "confusion0":
        n = len(p["metrics"]["test"]["confusion"])
        p["metrics"]["test"]["confusion"] = [[20 if i == j else 0 for j in range(n)] for i in range(n)]
        p["metrics"]["test"]["errors"] = 0
    elif edit == "format1":
        p.pop("weights_sha256", None); p.pop("payload_sha256", None); p["format_version"] = 1
        flip(p)
    elif edit == "format2-mean":
        p.pop("payload_sha256", None); p["format_version"] = 2
        p["normalization"]["mean"] = [0.125 for _ in p["normalization"]["mean"]]
    elif edit == "format-abc":
        p["format_version"] = "abc"
    elif edit == "arch_kwargs-none":
        p["arch_kwargs"] = None
    elif edit == "classes-none":
        p["classes"] = None
    elif edit == "normalization-list":
        p["normalization"] = [0.5, 0.5]
    elif edit == "metrics-list":
        p["metrics"] = [1, 2]
    elif edit == "input_shape-str":
        p["input_shape"] = "28x28"
    elif edit == "recipe-list":
        p["recipe"] = ["tiny-hard"]
    elif edit == "arch-unknown":
        p["arch"] = "resnet9000"
    elif edit == "missing-tensor":
        p["state_dict"].pop(sorted(p["state_dict"])[0])
    elif edit == "std-zero":
        p["normalization"]["std"] = [0.0 for _ in p["normalization"]["std"]]
    elif edit == "dataset-cifar10":
        p["dataset"] = "cifar10"
    elif edit == "dataset-none":
        p.pop("dataset", None)
    else:
        raise SystemExit("unknown edit " + edit)
    if reseal:  # as the tree itself would have written it: the check under test comes after the seal
        import kdverify.cache.checkpoint as c
        if "weights_sha256" in p and isinstance(p.get("state_dict"), dict):
            p["weights_sha256"] = c.state_digest(p["state_dict"])
        if "payload_sha256" in p and hasattr(c, "payload_seal"):
            p["payload_sha256"] = c.payload_seal(p)
    torch.save(p, dst)
''')


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


def setup(b: Battery) -> None:
    """The project folder every case copies, and the checkpoints the tree under test writes."""
    b.proj.mkdir(parents=True)
    shutil.copy(HERE / "tests" / "tiny_project.py", b.proj / "tiny_project.py")
    (b.proj / "fb.toml").write_text(MNIST_TOML)
    (b.work / "edit_ckpt.py").write_text(EDIT)
    cache = b.work / "cache"
    cache.mkdir()
    decoded = sorted((Path.home() / ".cache" / "kdverify").glob("cifar10-jpeg-q75-*.npz"))
    if decoded:  # the decoded stand-in, so a CIFAR case does not decode 60,000 JPEGs
        try:
            os.link(decoded[-1], cache / decoded[-1].name)
        except OSError:
            shutil.copy(decoded[-1], cache / decoded[-1].name)
    fx = b.work / "fixtures"
    fx.mkdir()
    steps = {
        "tiny.pt": ["--import", "tiny_project", "train", "--recipe", "tiny-hard", "--out", str(fx / "tiny.pt")],
        "teacher.pt": ["--import", "tiny_project", "train", "--recipe", "tiny-teacher", "--out",
                       str(fx / "teacher.pt")],
        "mnist.pt": ["train", "--recipe-file", "fb.toml", "--recipe", "fb-mnist", "--out", str(fx / "mnist.pt")],
    }
    for name, argv in steps.items():
        r = b.kdverify(*argv, cwd=b.proj, timeout=300)
        if r.rc != 0:
            raise SystemExit(f"fixture {name} failed ({r.rc}):\n{r.out[-3000:]}")
        b.fixtures[name] = fx / name


def edited(b: Battery, source: str, edit: str, folder: Path, reseal: bool = False) -> Path:
    dst = folder / f"{Path(source).stem}-{edit}.pt"
    r = b.run([sys.executable, str(b.work / "edit_ckpt.py"), str(b.fixtures[source]), str(dst), edit,
               "1" if reseal else "0"], folder)
    if r.rc != 0:
        raise RuntimeError(f"editing {source} ({edit}) failed: {r.out[-500:]}")
    return dst


# ---------------------------------------------------------------- outcomes

@dataclass
class Outcome:
    ok: bool | None  # None: the case could not run here (SKIP, not counted)
    line: str


def refused(r: Run, *, nothing_trained: bool = False, mentions: tuple[str, ...] = (), unchanged: dict | None = None,
            why: str = "") -> Outcome:
    """OK: a one-line error, non-zero exit; optionally before any epoch, naming things, files untouched."""
    problems = []
    if r.rc is None:
        problems.append("timed out")
    elif r.rc == 0:
        problems.append("exit 0")
    if r.crashed:
        problems.append("traceback")
    if nothing_trained and ("epoch " in r.out and "/" in r.out.split("epoch ", 1)[1][:12]):
        problems.append("trained first")
    for word in mentions:
        if word not in r.out:
            problems.append(f"does not name {word!r}")
    for path, before in (unchanged or {}).items():
        if _state(path) != before:
            problems.append(f"{Path(path).name} changed")
    line = r.line()
    return Outcome(not problems, (f"[{', '.join(problems)}] " if problems else "") + (why or line))


def _state(path: Path) -> str:
    p = Path(path)
    if not os.path.lexists(p):
        return "absent"
    st = os.lstat(p)
    if stat.S_ISCHR(st.st_mode):
        return f"chr:{st.st_rdev}"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return sha(p)


def no_sentinel(folder: Path, r: Run) -> Outcome:
    ran = (folder / SENTINEL).exists() or SENTINEL in r.out
    if ran:
        return Outcome(False, f"[working-directory module ran] {r.line()}")
    if r.crashed:
        return Outcome(False, f"[traceback] {r.line()}")
    return Outcome(True, f"not run (exit {r.rc}): {r.line()}")


def sentinel_module(folder: Path, name: str) -> None:
    (folder / f"{name}.py").write_text(f"open({str(folder / SENTINEL)!r}, 'w').write('ran')\n"
                                       f"print({SENTINEL!r})\nraise ImportError('shadowed {name}')\n")


@contextlib.contextmanager
def mounted(folder: Path, how: str):
    """`folder` as a full disk (a 4 kB tmpfs) or read-only (a bind mount): root only; None where it cannot be."""
    folder.mkdir(parents=True, exist_ok=True)
    if how == "full":
        cmds = [["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(folder)]]
    else:
        cmds = [["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]]
    done = 0
    try:
        for cmd in cmds:
            if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
                yield None
                return
            done += 1
        yield folder
    finally:
        if done:
            subprocess.run(["umount", str(folder)], capture_output=True)


SKIP_NO_MOUNT = Outcome(None, "needs root to mount a full or read-only folder")


# ---------------------------------------------------------------- cases

CASES: list[tuple[str, str, Callable[[Battery, Path], Outcome]]] = []


def case(category: str, name: str):
    def register(fn):
        CASES.append((category, name, fn))
        return fn
    return register


def _mnist_copy(b: Battery, folder: Path) -> Path:
    root = folder / "data"
    shutil.copytree(b.data / "MNIST", root / "MNIST")
    return root / "MNIST" / "raw"


def _train_mnist(b: Battery, folder: Path, root: Path) -> Run:
    return b.kdverify("train", "--recipe-file", "fb.toml", "--recipe", "fb-mnist", "--out", "x.pt",
                      "--data-root", str(root), cwd=folder)


def _data_case(name: str, fault: Callable[[Path], None]) -> None:
    @case("data", name)
    def run(b: Battery, folder: Path) -> Outcome:
        raw = _mnist_copy(b, folder)
        fault(raw)
        r = _train_mnist(b, folder, raw.parent.parent)
        return refused(r, nothing_trained=True, unchanged={folder / "x.pt": "absent"})


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def fault(raw: Path) -> None:
        f = raw / name
        f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])
    return fault


def _recompressed(name: str, edit: Callable[[bytearray], None]) -> Callable[[Path], None]:
    def fault(raw: Path) -> None:
        f = raw / name
        content = bytearray(gzip.decompress(f.read_bytes()))
        edit(content)
        f.write_bytes(gzip.compress(bytes(content)))
    return fault


def _set(index: int, value: int) -> Callable[[bytearray], None]:
    def edit(content: bytearray) -> None:
        content[index] = value
    return edit


_data_case("mnist-train-images-truncated-half", _truncate("train-images-idx3-ubyte.gz", 0.5))
_data_case("mnist-test-labels-truncated", _truncate("t10k-labels-idx1-ubyte.gz", 0.9))
_data_case("mnist-train-labels-empty", _truncate("train-labels-idx1-ubyte.gz", 0.0))
_data_case("mnist-label-changed-recompressed", _recompressed("train-labels-idx1-ubyte.gz", _set(100, 3)))
_data_case("mnist-pixel-changed-recompressed", _recompressed("t10k-images-idx3-ubyte.gz", _set(5000, 7)))
_data_case("mnist-header-count-changed", _recompressed("train-labels-idx1-ubyte.gz", _set(7, 1)))
_data_case("mnist-train-labels-missing", lambda raw: (raw / "train-labels-idx1-ubyte.gz").unlink())
_data_case("mnist-labels-swapped-train-test", lambda raw: shutil.copy(raw / "t10k-labels-idx1-ubyte.gz",
                                                                      raw / "train-labels-idx1-ubyte.gz"))
_data_case("mnist-gzip-garbage", lambda raw: (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"x" * 99))
_data_case("mnist-folder-instead-of-file", lambda raw: ((raw / "train-images-idx3-ubyte.gz").unlink(),
                                                        (raw / "train-images-idx3-ubyte.gz").mkdir()))


@case("data", "mnist-corrupt-under-pytest-fails-not-skips")
def _(b: Battery, folder: Path) -> Outcome:
    raw = _mnist_copy(b, folder)
    _truncate("t10k-images-idx3-ubyte.gz", 0.5)(raw)
    (folder / "test_m.py").write_text("def test_teacher(kd_claim):\n    kd_claim('hinton.teacher')\n")
    r = b.pytest("test_m.py", "--kd-data-root", str(raw.parent.parent), "--kd-require-data", "no", cwd=folder)
    ok = r.rc == 1 and "1 failed" in r.out and not r.crashed
    return Outcome(ok, ("" if ok else f"[exit {r.rc}: corrupt data must fail, not skip] ") + r.line())


def _cifar_case(name: str, edit: Callable[[dict], dict] | None, tar_fault: Callable[[Path], None] | None = None):
    @case("data", name)
    def run(b: Battery, folder: Path) -> Outcome:
        import numpy as np

        cache = folder / "cache"
        cache.mkdir()
        source = next((b.work / "cache").glob("cifar10-jpeg-q75-*.npz"), None)
        root = b.data
        if tar_fault is not None:
            root = folder / "data"
            (root / "cifar10-jpeg").mkdir(parents=True)
            shutil.copy(b.data / "cifar10-jpeg" / "cifar10-jpeg-q75.tar.gz", root / "cifar10-jpeg")
            tar_fault(root / "cifar10-jpeg" / "cifar10-jpeg-q75.tar.gz")
        if edit is not None:
            if source is None:
                return Outcome(False, "[not run] no decoded CIFAR stand-in to start from")
            with np.load(source) as npz:
                arrays = edit({k: npz[k] for k in npz.files})
            np.savez(cache / source.name, **arrays)
        r = b.kdverify("train", "--recipe-file", "fb.toml", "--recipe", "fb-cifar", "--out", "x.pt", "--data-root",
                       str(root), cwd=folder, env={"KDVERIFY_CACHE": str(cache)}, stop_when="decoding",
                       timeout=max(b.timeout, 120))
        if r.stopped:
            return Outcome(True, "the decoded copy was refused and the tar decoded again: " + r.line())
        return refused(r, nothing_trained=True)


def _shift_labels(arrays: dict) -> dict:
    arrays["train_y"] = (arrays["train_y"] + 1) % 10
    return arrays


def _one_image(arrays: dict) -> dict:
    arrays["train_x"] = arrays["train_x"].copy()
    arrays["train_x"][3] = 255 - arrays["train_x"][3]
    return arrays


_cifar_case("cifar-decoded-npz-labels-shifted", _shift_labels)
_cifar_case("cifar-decoded-npz-image-altered", _one_image)
_cifar_case("cifar-tar-truncated", None, lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]))


# -------- checkpoints: evaluate what was edited


def _ckpt_case(name: str, source: str, edit: str, reseal: bool = False, command: str = "evaluate",
               mentions: tuple[str, ...] = (), warning: str = "") -> None:
    @case("checkpoint", name)
    def run(b: Battery, folder: Path) -> Outcome:
        path = edited(b, source, edit, folder, reseal)
        imports = ["--import", "tiny_project"] if source in ("tiny.pt", "teacher.pt") else []
        if command == "evaluate":
            r = b.kdverify(*imports, "evaluate", str(path), cwd=folder)
        else:
            r = b.kdverify(*imports, "export", str(path), "--out", str(folder / "m.onnx"), cwd=folder)
        if warning and r.rc == 0 and not r.crashed:  # a sealed but meaningless checkpoint: said, in a line
            said = [x for x in r.out.splitlines() if "warning" in x and warning in x]
            return Outcome(bool(said), said[0] if said else f"[exit 0 without a warning] {r.line()}")
        return refused(r, mentions=mentions)


_ckpt_case("weights-bit-flipped", "tiny.pt", "weights")
_ckpt_case("normalisation-mean-edited", "tiny.pt", "mean")
_ckpt_case("normalisation-mean-edited-mnist", "mnist.pt", "mean")
_ckpt_case("metrics-edited", "tiny.pt", "metrics")
_ckpt_case("format1-no-digest-weights-edited", "tiny.pt", "format1")
_ckpt_case("format2-mean-edited", "tiny.pt", "format2-mean")
_ckpt_case("format-version-abc", "tiny.pt", "format-abc", mentions=("tiny-format-abc.pt",))
for _edit in ("arch_kwargs-none", "classes-none", "normalization-list", "metrics-list", "input_shape-str",
              "recipe-list", "arch-unknown", "missing-tensor"):
    _ckpt_case(f"malformed-{_edit}", "tiny.pt", _edit, reseal=True)
_ckpt_case("std-zero-warned-or-refused", "tiny.pt", "std-zero", reseal=True, warning="std")
_ckpt_case("mlp-labelled-cifar10", "mnist.pt", "dataset-cifar10", reseal=True)


@case("checkpoint", "truncated-file")
def _(b: Battery, folder: Path) -> Outcome:
    path = folder / "t.pt"
    data = b.fixtures["tiny.pt"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return refused(b.kdverify("--import", "tiny_project", "evaluate", str(path), cwd=folder))


@case("checkpoint", "not-a-checkpoint")
def _(b: Battery, folder: Path) -> Outcome:
    path = folder / "t.pt"
    path.write_text("hello\n")
    return refused(b.kdverify("evaluate", str(path), cwd=folder))


@case("checkpoint", "malicious-pickle-not-executed")
def _(b: Battery, folder: Path) -> Outcome:
    code = (f"import os, pickle\nclass P:\n    def __reduce__(self):\n        return (os.system, "
            f"('touch {folder / SENTINEL}',))\npickle.dump({{'format': 'kdverify-checkpoint', 'x': P()}}, "
            f"open('evil.pt', 'wb'))\n")
    b.python(code, cwd=folder)
    r = b.kdverify("evaluate", "evil.pt", cwd=folder)
    out = no_sentinel(folder, r)
    return out if not out.ok else refused(r)


@case("checkpoint", "evaluate-true-errors-after-mean-edit")
def _(b: Battery, folder: Path) -> Outcome:
    """Either refused, or the numbers of the model as trained: never the edited normalisation's."""
    truth = b.kdverify("evaluate", str(b.fixtures["mnist.pt"]), cwd=folder)
    r = b.kdverify("evaluate", str(edited(b, "mnist.pt", "mean", folder)), cwd=folder)
    if r.clean_error:
        return Outcome(True, r.line())
    first = lambda run: next((x for x in run.out.splitlines() if "errors (" in x), "?")  # noqa: E731
    same = first(truth).split(": ")[-1] == first(r).split(": ")[-1]
    return Outcome(same and not r.crashed, ("" if same else "[wrong numbers, exit 0] ") + first(r))


# -------- cache entries and pinned teachers: the verdict must be the true model's


def _claim_run(b: Battery, folder: Path, cache: Path, limit: float, report: Path) -> tuple[Run, dict | None]:
    r = b.pytest("test_claim.py", "--kd-import", "tiny_project", "--kd-cache", str(cache), "--kd-report", str(report),
                 cwd=folder, env={"FB_LIMIT": str(limit)})
    try:
        data = json.loads((report / "report.json").read_text())
        return r, next((c for c in data["claims"] if c["claim"] == "fb.tiny_hard"), None)
    except (OSError, ValueError, KeyError):
        return r, None


def _cache_case(name: str, edit: str, reseal: bool) -> None:
    @case("cache", name)
    def run(b: Battery, folder: Path) -> Outcome:
        (folder / "test_claim.py").write_text(CLAIM_TEST)
        cache = folder / "models"
        r, first = _claim_run(b, folder, cache, 100000, folder / "r1")
        if first is None or first["measured"] is None:
            return Outcome(False, f"[first run measured nothing, exit {r.rc}] {r.line()}")
        true = int(first["measured"])
        entries = sorted(cache.rglob("tiny-hard-*.pt"))
        if not entries:
            return Outcome(False, "[no cache entry written]")
        b.fixtures["_entry"] = entries[0]
        path = edited(b, "_entry", edit, folder, reseal)
        shutil.move(path, entries[0])
        r, second = _claim_run(b, folder, cache, true - 1, folder / "r2")  # the true model FAILs this threshold
        if second is None:
            return Outcome(False, f"[claim missing from report.json, exit {r.rc}] {r.line()}")
        ok = second["verdict"] == "FAIL" and second["measured"] == true and r.rc == 1
        return Outcome(ok, f"{'' if ok else '[believed the edited entry] '}verdict {second['verdict']}, measured "
                           f"{second['measured']} (true {true}, threshold <= {true - 1})")


_cache_case("entry-confusion-zeroed", "confusion0", reseal=False)
_cache_case("entry-confusion-zeroed-resealed", "confusion0", reseal=True)
_cache_case("entry-errors-edited-resealed", "metrics", reseal=True)
_cache_case("entry-weights-bit-flipped", "weights", reseal=False)


def _tree_copy(b: Battery, folder: Path) -> Path:
    tree = folder / "tree"
    shutil.copytree(b.tree / "kdverify", tree / "kdverify", ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _pinned_case(name: str, tamper: Callable[[Path], None]) -> None:
    @case("pinned", name)
    def run(b: Battery, folder: Path) -> Outcome:
        tree = _tree_copy(b, folder)
        tamper(tree / "kdverify" / "teachers")
        (folder / "test_p.py").write_text(
            "def test_params_a(kd_claim):\n    kd_claim('tutorial.params_deepnn')\n\n"
            "def test_teacher(kd_claim):\n    kd_claim('hinton.teacher')\n\n"
            "def test_params_b(kd_claim):\n    kd_claim('tutorial.params_lightnn')\n")
        report = folder / "rep"
        r = b.pytest("test_p.py", "--kd-report", str(report), "--kd-cache", str(folder / "models"), cwd=folder,
                     env={"PYTHONPATH": str(tree)})
        problems = []
        if r.rc in (0, None):
            problems.append(f"exit {r.rc}")
        if "INTERNALERROR" in r.out:
            problems.append("INTERNALERROR")
        table = [x for x in r.out.splitlines() if x.startswith("hinton.teacher")]
        if not table or not any(v in table[0] for v in ("ERROR", "FAIL")):
            problems.append("teacher absent from the table")
        try:
            data = json.loads((report / "report.json").read_text())
            row = next((c for c in data["claims"] if c["claim"] == "hinton.teacher"), None)
            if row is None or row["verdict"] not in ("ERROR", "FAIL"):
                problems.append("teacher absent from report.json")
            if "hinton.teacher" not in (report / "report.md").read_text():
                problems.append("teacher absent from report.md")
        except (OSError, ValueError):
            problems.append("no report")
        summary = next((x for x in r.out.splitlines() if x.startswith("claims:")), r.line())
        return Outcome(not problems, (f"[{', '.join(problems)}] " if problems else "") + summary)


def _flip_teacher(folder: Path) -> None:
    f = folder / "hinton-teacher.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))


def _manifest_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        m = json.loads((folder / "manifest.json").read_text())
        edit(m["teachers"]["hinton-teacher"])
        (folder / "manifest.json").write_text(json.dumps(m))
    return tamper


_pinned_case("teacher-bit-flipped", _flip_teacher)
_pinned_case("teacher-replaced-by-other", lambda f: shutil.copy(f / "tutorial-deepnn.pt", f / "hinton-teacher.pt"))
_pinned_case("manifest-sha-edited", _manifest_edit(lambda e: e.update(sha256="0" * 64)))
_pinned_case("manifest-entry-without-file", _manifest_edit(lambda e: e.pop("file")))
_pinned_case("teacher-file-missing", lambda f: (f / "hinton-teacher.pt").unlink())


# -------- command line


def _cli_case(name: str, argv: Callable[[Battery, Path], list[str]], *, nothing_trained: bool = True,
              protect: tuple[str, ...] = (), rc: int | None = None) -> None:
    @case("cli", name)
    def run(b: Battery, folder: Path) -> Outcome:
        args = argv(b, folder)
        before = {folder / p: _state(folder / p) for p in protect}
        r = b.kdverify(*args, cwd=folder)
        out = refused(r, nothing_trained=nothing_trained, unchanged=before)
        if out.ok and rc is not None and r.rc != rc:
            return Outcome(False, f"[exit {r.rc}, a usage error is {rc}] {out.line}")
        return out


TRAIN = ["--import", "tiny_project", "train", "--recipe", "tiny-hard"]
_cli_case("train-epochs-10**30", lambda b, f: [*TRAIN, "--out", "o.pt", "--epochs", str(10**30)], rc=2)
_cli_case("train-epochs-0", lambda b, f: [*TRAIN, "--out", "o.pt", "--epochs", "0"], rc=2)
_cli_case("train-seed-2**64", lambda b, f: [*TRAIN, "--out", "o.pt", "--seed", str(2**64)], rc=2)
_cli_case("train-unknown-recipe", lambda b, f: ["train", "--recipe", "no-such", "--out", "o.pt"])
_cli_case("train-device-cuda7", lambda b, f: [*TRAIN, "--out", "o.pt", "--device", "cuda:7"])
_cli_case("train-out-under-a-file", lambda b, f: (f.joinpath("plain").write_text("x"),
                                                  [*TRAIN, "--out", "plain/o.pt"])[1])
_cli_case("train-out-in-proc", lambda b, f: [*TRAIN, "--out", "/proc/fault-battery/o.pt"])
_cli_case("train-out-is-a-folder", lambda b, f: (f.joinpath("d").mkdir(), [*TRAIN, "--out", "d"])[1])
_cli_case("train-existing-out-without-force", lambda b, f: (shutil.copy(b.fixtures["teacher.pt"], f / "keep.pt"),
                                                            [*TRAIN, "--out", "keep.pt"])[1], protect=("keep.pt",))
_cli_case("train-force-onto-device-node", lambda b, f: (os.mknod(f / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
                                                        [*TRAIN, "--out", "null", "--force"])[1], protect=("null",))
_cli_case("distill-out-is-teacher-force", lambda b, f: (
    shutil.copy(b.fixtures["teacher.pt"], f / "t.pt"),
    ["--import", "tiny_project", "distill", "--teacher", "t.pt", "--recipe", "tiny-kd-0", "--out", "t.pt",
     "--force"])[1], protect=("t.pt",))
_cli_case("distill-teacher-of-other-dataset", lambda b, f: [
    "--import", "tiny_project", "distill", "--teacher", str(b.fixtures["mnist.pt"]), "--recipe", "tiny-kd-0",
    "--out", "s.pt"])
_cli_case("distill-teacher-missing", lambda b, f: ["--import", "tiny_project", "distill", "--teacher", "none.pt",
                                                   "--recipe", "tiny-kd-0", "--out", "s.pt"])
_cli_case("evaluate-missing-file", lambda b, f: ["evaluate", "none.pt"])
_cli_case("import-module-raising", lambda b, f: (f.joinpath("boom.py").write_text("raise RuntimeError('boom')\n"),
                                                 ["--import", "boom", "recipes"])[1])
_cli_case("import-module-missing", lambda b, f: ["--import", "no_such_module_xyz", "recipes"])
_cli_case("export-atol-nan", lambda b, f: ["export", str(b.fixtures["mnist.pt"]), "--out", "m.onnx", "--atol", "nan"],
          rc=2)
_cli_case("export-atol-inf", lambda b, f: ["export", str(b.fixtures["mnist.pt"]), "--out", "m.onnx", "--atol", "inf"],
          rc=2)
_cli_case("export-atol-negative", lambda b, f: ["export", str(b.fixtures["mnist.pt"]), "--out", "m.onnx", "--atol",
                                                "-1"], rc=2)
_cli_case("export-existing-out-without-force", lambda b, f: (
    f.joinpath("m.onnx").write_text("keep"), ["export", str(b.fixtures["mnist.pt"]), "--out", "m.onnx"])[1],
    protect=("m.onnx",))
_cli_case("export-out-is-its-checkpoint", lambda b, f: (
    shutil.copy(b.fixtures["mnist.pt"], f / "m.pt"), ["export", "m.pt", "--out", "m.pt", "--force"])[1],
    protect=("m.pt",))
_cli_case("calibrate-existing-out-without-force", lambda b, f: (
    f.joinpath("cal.json").write_text("{}"), ["calibrate", "--out", "cal.json", "--claim", "hinton.teacher"])[1],
    protect=("cal.json",))


@case("cli", "train-epochs-1000000-eta")
def _(b: Battery, folder: Path) -> Outcome:
    """A million epochs is allowed; the ETA must not wrap at 24 h (stopped after the first progress line)."""
    r = b.kdverify("train", "--recipe-file", "fb.toml", "--recipe", "fb-eta", "--out", "o.pt", "--epochs", "1000000",
                   cwd=folder, stop_when="ETA", timeout=90)
    line = next((x for x in r.out.splitlines() if "ETA" in x), "")
    if not line:
        return Outcome(False, f"[no progress line] {r.line()}")
    per_epoch = float(line.split("s/epoch")[0].split()[-1])
    eta = line.split("ETA", 1)[1].strip()
    ok = "d " in eta or 0 < per_epoch * 999_999 < 86_400 * 0.9  # an epoch of 60,000 images: ~1 s, so days
    return Outcome(ok and not r.crashed, ("" if ok else "[ETA wraps at 24 h] ") + line.strip())


# -------- export


def _export_case(name: str, make: Callable[[Battery, Path], list[str]], check: Callable | None = None) -> None:
    @case("export", name)
    def run(b: Battery, folder: Path) -> Outcome:
        r = b.kdverify(*make(b, folder), cwd=folder)
        if check is not None:
            return check(b, folder, r)
        out = refused(r)
        if out.ok and (folder / "exports").exists():
            return Outcome(False, f"[left an exports/ folder] {out.line}")
        return out


def _metadata_not_edited(b: Battery, folder: Path, r: Run) -> Outcome:
    if r.clean_error:
        return Outcome(True, r.line())
    if r.rc != 0:
        return refused(r)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(folder / "m.onnx")).metadata_props}
    bad = "4242" in props.get("test_errors", "")
    return Outcome(not bad, ("[ONNX metadata carries the edited number] " if bad else "") +
                   f"test_errors={props.get('test_errors', '')[:70]}")


_export_case("export-weights-bit-flipped", lambda b, f: ["export", str(edited(b, "mnist.pt", "weights", f))])
_export_case("export-mean-edited", lambda b, f: ["export", str(edited(b, "mnist.pt", "mean", f))])
_export_case("export-metrics-edited", lambda b, f: ["export", str(edited(b, "mnist.pt", "metrics", f)), "--out",
                                                    "m.onnx"], _metadata_not_edited)
_export_case("export-truncated", lambda b, f: (
    f.joinpath("t.pt").write_bytes(b.fixtures["mnist.pt"].read_bytes()[:999]), ["export", "t.pt"])[1])
_export_case("export-format-abc", lambda b, f: ["export", str(edited(b, "mnist.pt", "format-abc", f))])
_export_case("export-mlp-labelled-cifar10", lambda b, f: ["export", str(edited(b, "mnist.pt", "dataset-cifar10", f,
                                                                              reseal=True))])
_export_case("export-malformed-classes", lambda b, f: ["export", str(edited(b, "mnist.pt", "classes-none", f,
                                                                           reseal=True))])


@case("export", "export-test-split-smaller-than-the-probe")
def _(b: Battery, folder: Path) -> Outcome:
    """The tiny dataset has 200 test images, fewer than the 264 the validation batches add up to: it exports."""
    r = b.kdverify("--import", "tiny_project", "export", str(b.fixtures["tiny.pt"]), "--out", "m.onnx", cwd=folder)
    ok = r.rc == 0 and (folder / "m.onnx").is_file() and not r.crashed
    return Outcome(ok, ("" if ok else f"[exit {r.rc}] ") + r.line())


@case("export", "onnx-py-in-cwd-not-run")
def _(b: Battery, folder: Path) -> Outcome:
    sentinel_module(folder, "onnx")
    return no_sentinel(folder, b.kdverify("export", str(b.fixtures["mnist.pt"]), "--out", "m.onnx", cwd=folder))


@case("export", "onnx-py-in-cwd-not-run-with-import")
def _(b: Battery, folder: Path) -> Outcome:
    sentinel_module(folder, "onnx")
    return no_sentinel(folder, b.kdverify("--import", "tiny_project", "export", str(b.fixtures["tiny.pt"]), "--out",
                                          "m.onnx", cwd=folder))


# -------- pytest plugin


def _plugin_case(name: str, make: Callable[[Battery, Path], list[str]], protect: tuple[str, ...] = (),
                 check: Callable | None = None) -> None:
    @case("plugin", name)
    def run(b: Battery, folder: Path) -> Outcome:
        (folder / "test_x.py").write_text("def test_params(kd_claim):\n    kd_claim('tutorial.params_lightnn')\n")
        args = make(b, folder)
        before = {folder / p: _state(folder / p) for p in protect}
        r = b.pytest(*args, cwd=folder)
        if check is not None:
            return check(folder, r)
        out = refused(r, unchanged=before)
        if out.ok and ("passed" in r.out or "claims:" in r.out):
            return Outcome(False, f"[refused only after the claims ran] {out.line}")
        return out


_plugin_case("kd-report-names-a-file", lambda b, f: (f.joinpath("rep").write_text("keep"),
                                                     ["test_x.py", "--kd-report", "rep"])[1], protect=("rep",))
_plugin_case("kd-cache-is-a-file", lambda b, f: (f.joinpath("c").write_text("keep"),
                                                 ["test_x.py", "--kd-cache", "c"])[1], protect=("c",))
_plugin_case("kd-report-under-a-file", lambda b, f: (f.joinpath("p").write_text("keep"),
                                                     ["test_x.py", "--kd-report", "p/rep"])[1], protect=("p",))
_plugin_case("kd-import-raising", lambda b, f: (f.joinpath("boom.py").write_text("raise RuntimeError('boom')\n"),
                                                ["test_x.py", "--kd-import", "boom"])[1])
_plugin_case("kd-import-missing", lambda b, f: ["test_x.py", "--kd-import", "no_such_module_xyz"])
_plugin_case("kd-seeds-0", lambda b, f: ["test_x.py", "--kd-seeds", "0"])
_plugin_case("kd-recipe-file-bad", lambda b, f: (f.joinpath("bad.toml").write_text("[x]\nlr = -1\n"),
                                                 ["test_x.py", "--kd-recipe-file", "bad.toml"])[1])


def _error_rows(claim_id: str, expect_failed: int) -> Callable:
    def check(folder: Path, r: Run) -> Outcome:
        problems = []
        if r.rc in (0, None):
            problems.append(f"exit {r.rc}")
        if "INTERNALERROR" in r.out:
            problems.append("INTERNALERROR")
        row = next((x for x in r.out.splitlines() if x.startswith(claim_id)), "")
        if "ERROR" not in row:
            problems.append("no ERROR row in the table")
        try:
            data = json.loads((folder / "rep" / "report.json").read_text())
            entry = next((c for c in data["claims"] if c["claim"] == claim_id), None)
            if entry is None or entry["verdict"] != "ERROR":
                problems.append("not ERROR in report.json")
            if claim_id not in (folder / "rep" / "report.md").read_text():
                problems.append("absent from report.md")
        except (OSError, ValueError):
            problems.append("no report")
        summary = next((x for x in r.out.splitlines() if x.startswith("claims:")), r.line())
        if " 0 failed" in summary and "error" not in summary.lower():
            problems.append("summary says 0 failed")
        return Outcome(not problems, (f"[{', '.join(problems)}] " if problems else "") + summary)
    return check


RAISING = """
from kdverify.claims.core import Claim, Threshold


def test_ok(kd_claim):
    kd_claim('tutorial.params_lightnn')


def test_typo(kd_claim):
    kd_claim(Claim("fb.typo", "battery", "a typo'd recipe", "errors_on_test", {"recipe": "tiny-hrad"}, None, "errors",
                   Threshold("<=", 10)))


def test_forward_raises(kd_claim):
    kd_claim(Claim("fb.broken", "battery", "a model whose forward raises", "errors_on_test", {"recipe": "fb-broken"},
                   None, "errors", Threshold("<=", 10)))
"""

BROKEN = """
import tiny_project  # noqa: F401
from kdverify.train.models import HintonMLP, register_model
from kdverify.train.recipes import Recipe, register_recipe


class Broken(HintonMLP):
    def forward(self, x):
        raise RuntimeError("forward is broken")


register_model("fb_broken", Broken, replace=True)
register_recipe(Recipe("fb-broken", "tiny", "fb_broken", epochs=1, lr=0.05, arch_kwargs=dict(hidden=8)), replace=True)
"""


@case("plugin", "claim-typo-recipe-is-an-error-row")
def _(b: Battery, folder: Path) -> Outcome:
    (folder / "test_r.py").write_text(RAISING)
    (folder / "broken.py").write_text(BROKEN)
    r = b.pytest("test_r.py", "--kd-import", "broken", "--kd-report", "rep", "--kd-cache", "models", "-k",
                 "ok or typo", cwd=folder)
    return _error_rows("fb.typo", 1)(folder, r)


@case("plugin", "claim-forward-raises-is-an-error-row")
def _(b: Battery, folder: Path) -> Outcome:
    (folder / "test_r.py").write_text(RAISING)
    (folder / "broken.py").write_text(BROKEN)
    r = b.pytest("test_r.py", "--kd-import", "broken", "--kd-report", "rep", "--kd-cache", "models", "-k",
                 "ok or forward", cwd=folder)
    return _error_rows("fb.broken", 1)(folder, r)


# -------- recipe files


def _recipe_case(name: str, fields: str, *, command: str = "train", names_recipe: bool = True) -> None:
    @case("recipe-file", name)
    def run(b: Battery, folder: Path) -> Outcome:
        (folder / "r.toml").write_text(fields)
        argv = ["train", "--recipe-file", "r.toml", "--recipe", "mine", "--out", "o.pt"] if command == "train" else \
            ["recipes", "--recipe-file", "r.toml"]
        r = b.kdverify(*argv, cwd=folder, timeout=max(b.timeout, 90))
        out = refused(r, nothing_trained=True, unchanged={folder / "o.pt": "absent"})
        line = r.line()
        if out.ok and not ("r.toml" in line and (not names_recipe or "mine" in line or "hinton-teacher" in line)):
            return Outcome(False, f"[does not name file and recipe] {line}")
        if out.ok and len(line) > 500:  # a list of the known fields fits; a recipe's repr (1,382 characters) does not
            return Outcome(False, f"[a {len(line)}-character line] {line[:100]}...")
        if out.ok and "loaded" not in line and ("training mine" in r.out):
            return Outcome(False, f"[refused only after the data loaded] {line}")
        return out


MLP = 'dataset = "mnist"\narch = "hinton_mlp"\nepochs = 1\nlr = 0.1\ntrain_subset = 1000\n'
for _name, _extra in (("holdout-10**9", "holdout = 1000000000"), ("hidden-negative", "arch_kwargs = { hidden = -5 }"),
                      ("arch_kwargs-unknown-key", "arch_kwargs = { hiden = 16 }"),
                      ("hidden-float", "arch_kwargs = { hidden = 2.5 }"),
                      ("hidden-string", 'arch_kwargs = { hidden = "big" }'),
                      ("num_classes-wrong", "arch_kwargs = { num_classes = 5 }"),
                      ("in_features-wrong", "arch_kwargs = { in_features = 5 }"),
                      ("hidden-huge", "arch_kwargs = { hidden = 1000000 }"),
                      ("train_subset-not-multiple", "train_subset = 15"),
                      ("keep_classes-out-of-range", "keep_classes = [11]"),
                      ("drop-every-class", "drop_classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"),
                      ("seed-2**70", "seed = 1180591620717411303424"),
                      ("lr-negative", "lr = -1"), ("unknown-field", "learning_rate = 3"),
                      ("original-holdout-10**9", "[mine.original]\nholdout = 1000000000")):
    _recipe_case(_name, "[mine]\n" + (MLP.replace("train_subset = 1000\n", "") if "train_subset" in _extra else MLP)
                 .replace("lr = 0.1\n", "" if _extra.startswith("lr") else "lr = 0.1\n") + _extra + "\n")
_recipe_case("not-toml", "[mine\n", names_recipe=False)
_recipe_case("redefines-a-builtin", "[hinton-teacher]\n" + MLP, command="recipes")


@case("recipe-file", "tomllib-py-in-cwd-not-run")
def _(b: Battery, folder: Path) -> Outcome:
    sentinel_module(folder, "tomllib")
    (folder / "r.toml").write_text("[mine]\n" + MLP)
    return no_sentinel(folder, b.kdverify("recipes", "--recipe-file", "r.toml", cwd=folder))


# -------- working-directory modules


def _cwd_case(name: str, module: str, argv: Callable[[Battery, Path], list[str]], tool: str = "kdverify") -> None:
    @case("cwd-modules", name)
    def run(b: Battery, folder: Path) -> Outcome:
        sentinel_module(folder, module)
        args = argv(b, folder)
        r = b.kdverify(*args, cwd=folder) if tool == "kdverify" else b.pytest(*args, cwd=folder)
        return no_sentinel(folder, r)


_cwd_case("tomllib-with-recipe-file-and-import", "tomllib", lambda b, f: (
    f.joinpath("r.toml").write_text("[mine]\n" + MLP), ["--import", "tiny_project", "recipes", "--recipe-file",
                                                        "r.toml"])[1])
_cwd_case("onnx-export-with-import", "onnx", lambda b, f: ["--import", "tiny_project", "export",
                                                           str(b.fixtures["tiny.pt"]), "--out", "m.onnx"])
_cwd_case("onnxruntime-export", "onnxruntime", lambda b, f: ["export", str(b.fixtures["mnist.pt"]), "--out",
                                                             "m.onnx"])
_cwd_case("filelock-train-with-import", "filelock", lambda b, f: [*TRAIN, "--out", "o.pt"])


@case("cwd-modules", "onnx-under-pytest-kd-import")
def _(b: Battery, folder: Path) -> Outcome:
    """The rootdir joins sys.path for --kd-import tiny_project; ./onnx.py beside it must not shadow the library
    when a test in tests/ imports kdverify's exporter."""
    sentinel_module(folder, "onnx")
    (folder / "tests").mkdir()
    (folder / "tests" / "test_e.py").write_text("def test_e():\n    import kdverify.export.onnx  # noqa: F401\n")
    (folder / "pytest.ini").write_text("[pytest]\n")
    return no_sentinel(folder, b.pytest("tests/test_e.py", "--kd-import", "tiny_project", cwd=folder))


# -------- full disks and read-only folders (root only: a 4 kB tmpfs, a read-only bind mount)


@case("cache", "kd-cache-on-a-full-disk-keeps-the-model")
def _(b: Battery, folder: Path) -> Outcome:
    (folder / "test_claim.py").write_text(CLAIM_TEST)
    with mounted(folder / "models", "full") as cache:
        if cache is None:
            return SKIP_NO_MOUNT
        r, row = _claim_run(b, folder, cache, 100000, folder / "rep")
    ok = r.rc == 0 and not r.crashed and row is not None and row["verdict"] == "PASS"
    said = next((x for x in r.out.splitlines() if "No space" in x or "cannot" in x), r.line())
    return Outcome(ok, ("" if ok else f"[exit {r.rc}, verdict {row and row['verdict']}] ") + said)


@case("cli", "train-out-on-a-full-disk-rescued")
def _(b: Battery, folder: Path) -> Outcome:
    with mounted(folder / "full", "full") as full:
        if full is None:
            return SKIP_NO_MOUNT
        r = b.kdverify(*TRAIN, "--out", str(full / "o.pt"), cwd=folder)
    rescued = list((b.work / "cache").glob("rescued/*.pt"))
    out = refused(r)
    if out.ok and not rescued:
        return Outcome(False, f"[the trained model was lost] {out.line}")
    return out


@case("cli", "pin-force-into-a-read-only-folder")
def _(b: Battery, folder: Path) -> Outcome:
    tree = _tree_copy(b, folder)
    teachers = tree / "kdverify" / "teachers"
    shutil.copy(teachers / "hinton-teacher.pt", folder / "t.pt")
    with mounted(teachers, "ro") as ro:
        if ro is None:
            return SKIP_NO_MOUNT
        r = b.kdverify("pin", "t.pt", "--force", cwd=folder, env={"PYTHONPATH": str(tree)})
    return refused(r)


@case("cli", "train-out-in-a-read-only-folder")
def _(b: Battery, folder: Path) -> Outcome:
    with mounted(folder / "ro", "ro") as ro:
        if ro is None:
            return SKIP_NO_MOUNT
        r = b.kdverify(*TRAIN, "--out", str(ro / "o.pt"), cwd=folder)
    return refused(r, nothing_trained=True)


@case("plugin", "kd-cache-read-only")
def _(b: Battery, folder: Path) -> Outcome:
    (folder / "test_claim.py").write_text(CLAIM_TEST)
    with mounted(folder / "models", "ro") as ro:
        if ro is None:
            return SKIP_NO_MOUNT
        r = b.pytest("test_claim.py", "--kd-import", "tiny_project", "--kd-cache", str(ro), cwd=folder)
    out = refused(r)
    if out.ok and "passed" in r.out:
        return Outcome(False, f"[refused only after the claims ran] {out.line}")
    return out


@case("export", "export-into-a-read-only-folder")
def _(b: Battery, folder: Path) -> Outcome:
    with mounted(folder / "ro", "ro") as ro:
        if ro is None:
            return SKIP_NO_MOUNT
        r = b.kdverify("export", str(b.fixtures["mnist.pt"]), "--out", str(ro / "m.onnx"), cwd=folder)
    return refused(r)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE, help="checkout whose kdverify package is run")
    parser.add_argument("--label", default=None, help="name of the report (default: the tree's commit)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("KDVERIFY_DATA", "/work/shared/data")))
    parser.add_argument("--only", default="", help="comma-separated categories or case names")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, default=HERE / "reports" / "fault-battery")
    args = parser.parse_args()
    tree = args.tree.resolve()
    if not (tree / "kdverify" / "cli.py").is_file():
        parser.error(f"{tree} holds no kdverify package")
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "kdverify"], capture_output=True,
                           text=True).stdout.strip()
    label = args.label or commit
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    cases = [c for c in CASES if not only or c[0] in only or c[1] in only]
    work = Path(tempfile.mkdtemp(prefix="fault-battery-"))
    battery = Battery(tree, args.data.resolve(), work, args.timeout)
    print(f"fault battery: {len(cases)} cases against {tree} ({commit}{', uncommitted changes' if dirty else ''}), "
          f"work folder {work}", flush=True)
    started = time.monotonic()
    results = []
    try:
        setup(battery)
        print(f"fixtures trained by the tree under test in {time.monotonic() - started:.0f}s", flush=True)
        for category, name, fn in cases:
            t0 = time.monotonic()
            try:
                outcome = fn(battery, battery.folder(name))
            except Exception as exc:  # noqa: BLE001 - a case that could not be set up is reported, not fatal
                outcome = Outcome(False, f"[battery error] {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
            verdict = {True: "OK", False: "DEFECT", None: "SKIP"}[outcome.ok]
            results.append((name, category, verdict, outcome.line.replace("|", "/"), time.monotonic() - t0))
            print(f"{verdict:6} {category:12} {name:45} {time.monotonic() - t0:5.1f}s  {outcome.line[:150]}",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    defects = [r for r in results if r[2] == "DEFECT"]
    skipped = [r for r in results if r[2] == "SKIP"]
    run = len(results) - len(skipped)
    totals = f"{run} cases, {run - len(defects)} OK, {len(defects)} defects" + (
        f" ({len(skipped)} skipped: they need root)" if skipped else "")
    by_category = {}
    for name, category, verdict, _, _ in results:
        ok, n = by_category.get(category, (0, 0))
        if verdict != "SKIP":
            by_category[category] = (ok + (verdict == "OK"), n + 1)
    lines = [f"# Fault battery: {label}", "",
             f"Tree: `{tree}` at {commit}{' (uncommitted changes in kdverify/)' if dirty else ''}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}; {time.monotonic() - started:.0f} s; "
             f"run by `python tools/fault_battery.py --tree {tree} --label {label}"
             f"{' --only ' + args.only if args.only else ''}`.", "",
             f"**Totals: {totals}.**", "",
             "| category | cases | OK | defects |", "|---|---:|---:|---:|"]
    lines += [f"| {c} | {n} | {ok} | {n - ok} |" for c, (ok, n) in by_category.items()]
    lines += ["", "| case | category | outcome | what it said |", "|---|---|---|---|"]
    lines += [f"| {name} | {category} | {verdict} | {line[:200]} |" for name, category, verdict, line, _ in results]
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / f"{label}.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"\n{totals}\nwrote {report}")
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
