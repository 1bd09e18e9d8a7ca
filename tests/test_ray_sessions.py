"""--kd-executor ray interrupted: Ctrl-C cancels the tasks, stops the Ray it started and leaves nothing behind.

Apart from test_ray_executor.py so that pytest-xdist, which keeps a module on one worker, runs the two at once."""

import pytest

pytest.importorskip("ray")

from ray_support import make_ray_project, read_until  # noqa: E402

pytestmark = pytest.mark.processes


@pytest.fixture
def ray_project(pytester, tmp_path, monkeypatch):
    return make_ray_project(pytester, tmp_path, monkeypatch)


def test_ctrl_c_cancels_the_tasks_and_leaves_no_cache_entry(ray_project, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    pytester, ray_tmp = ray_project
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kd-import", "ray_project",
                             "--kd-budget", "paper", f"--kd-cache={cache}", "--kd-executor", "ray", "-k", "slow"],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(pytester.path)},
                            # Ctrl-C as at a terminal: a suite started in the background by a non-interactive
                            # shell ignores SIGINT, and a child would inherit that and never be interrupted
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = read_until(proc, "submitted to Ray")
    assert "submitted to Ray" in seen, seen
    deadline = time.monotonic() + 240
    running = tmp_path / "marks" / "slow-running"  # the slow model (0.5 s a batch) is training on a worker
    while not running.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running.exists(), "the Ray task never started"
    proc.send_signal(signal.SIGINT)
    out = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "Traceback" not in out.split("KeyboardInterrupt")[0]
    assert not list(cache.glob("*.pt")) and not list(cache.glob(".*.tmp")), list(cache.iterdir())
    left = subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True, text=True).stdout.split()
    assert not left, f"Ray processes of the session still running: {left}"
