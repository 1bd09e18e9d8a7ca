"""The model cache shared by processes: each key trained once, a killed holder never blocks or corrupts.

Real processes (subprocess, with this test's process as one more), a real filelock, the tiny synthetic recipes
of `tiny_project`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdverify.cache.spec import resolve
from kdverify.cache.store import ModelCache
from kdverify.data import load_dataset

TESTS = Path(__file__).parent

WORKER = '''
import json, sys, time
import tiny_project  # registers the dataset and recipes
from kdverify.cache.store import ModelCache
from kdverify.data import load_dataset
from kdverify.cache.spec import resolve

root, recipe_name, slow, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
if mode == "die-while-writing":
    import kdverify.io as kio
    real_replace = kio.os.replace
    def stuck_replace(src, dst):  # the checkpoint bytes are in the temporary, the rename has not happened
        print("WRITING", flush=True)
        time.sleep(60)
    kio.os.replace = stuck_replace

def progress(recipe, record, total):
    print(f"EPOCH {recipe.name} {record.epoch}", flush=True)
    time.sleep(slow)

recipe = resolve(recipe_name, "paper")
cache = ModelCache(root, {"tiny": load_dataset("tiny")}, "paper", progress=progress, say=lambda m: print(m, flush=True))
trained = cache.get(recipe)
print("RESULT " + json.dumps({"source": trained.source, "weights": trained.weights}), flush=True)
'''


def _spawn(tmp_path, recipe="tiny-teacher", slow=0.0, mode="normal"):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), recipe, str(slow), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _result(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def _wait_for(proc, marker: str, timeout: float = 60.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never came: {''.join(lines)}")


def _get_here(tmp_path, recipe="tiny-teacher", slow=0.0):
    """This test's process as one more of the processes sharing the cache: what it said and what it got."""
    said = []

    def progress(training, record, total):  # `training`: the recipe being trained, a teacher too
        said.append(f"EPOCH {training.name} {record.epoch}")
        time.sleep(slow)

    cache = ModelCache(tmp_path / "cache", {"tiny": load_dataset("tiny")}, "paper", progress=progress,
                       say=said.append)
    trained = cache.get(resolve(recipe, "paper"))
    return "\n".join(said), {"source": trained.source, "weights": trained.weights}


@pytest.mark.processes
def test_concurrent_processes_train_a_key_once_and_all_get_the_same_weights(tmp_path, tiny_registered):
    procs = [_spawn(tmp_path, "tiny-kd-0", slow=0.2) for _ in range(2)]  # and this process, the third
    here, result_here = _get_here(tmp_path, "tiny-kd-0", slow=0.2)
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [_result(o) for o in outs] + [result_here]
    outs.append(here)
    # the teacher (3 epochs) and the student (2 epochs) were each trained by exactly one process
    assert sum(o.count("EPOCH tiny-teacher ") for o in outs) == 3, outs
    assert sum(o.count("EPOCH tiny-kd-0 ") for o in outs) == 2, outs
    assert sorted(r["source"] for r in results) == ["cache", "cache", "trained"]
    assert len({r["weights"] for r in results}) == 1
    models = tmp_path / "cache"
    assert sorted(p.name.split("-seed")[0] for p in models.glob("*.pt")) == ["tiny-kd-0", "tiny-teacher"]
    assert not list(models.glob("*.tmp"))


@pytest.mark.processes
def test_a_holder_killed_while_training_never_blocks_the_next_run(tmp_path, tiny_registered):
    victim = _spawn(tmp_path, slow=3.0)
    _wait_for(victim, "EPOCH tiny-teacher 1")  # holds the lock, mid-training
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    started = time.monotonic()
    said, result = _get_here(tmp_path)  # the next run: this process
    assert result["source"] == "trained" and time.monotonic() - started < 60
    assert "waiting for" not in said  # the lock died with its holder


@pytest.mark.processes
def test_a_holder_killed_while_writing_leaves_nothing_corrupt_and_its_temporary_is_cleaned(tmp_path, tiny_registered):
    victim = _spawn(tmp_path, mode="die-while-writing")
    _wait_for(victim, "WRITING")
    temporaries = list((tmp_path / "cache").glob(".*.tmp"))
    assert temporaries and all(t.stat().st_size > 0 for t in temporaries)  # the bytes were there, not renamed
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    assert not list((tmp_path / "cache").glob("*.pt"))  # no half entry under the real name
    _, result = _get_here(tmp_path)  # the next run: this process
    assert result["source"] == "trained"
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # the dead writer's temporary was removed
    fresh = ModelCache(tmp_path / "cache", {"tiny": load_dataset("tiny")}, "paper", progress=None)  # nothing in memory
    assert fresh.get(resolve("tiny-teacher", "paper")).weights == result["weights"]
    assert fresh.get(resolve("tiny-teacher", "paper")).source == "cache"


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip"])
def test_a_corrupt_entry_is_retrained_under_the_lock_never_trusted(tmp_path, damage, capsys, tiny_registered):
    recipe = resolve("tiny-hard", "paper")

    def fresh_cache():  # a new process's view: nothing in memory
        return ModelCache(tmp_path / "cache", {"tiny": load_dataset("tiny")}, "paper", progress=None)

    assert fresh_cache().get(recipe).source == "trained"
    entry = next((tmp_path / "cache").glob("*.pt"))
    blob = bytearray(entry.read_bytes())
    if damage == "garbage":
        blob = bytearray(b"not a checkpoint")
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:  # a bit inside the weights: still a loadable file
        blob[len(blob) // 2] ^= 0x10
    entry.write_bytes(bytes(blob))
    assert fresh_cache().get(recipe).source == "trained"
    assert "is unreadable or corrupt: retraining it" in capsys.readouterr().err
    assert fresh_cache().get(recipe).source == "cache"
