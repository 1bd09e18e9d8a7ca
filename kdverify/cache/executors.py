"""Where the models a run is missing get trained: in this process (`local`) or as Ray tasks (`ray`).

`local` is today's behaviour: the cache trains a model when a claim first asks for it; Ray is never
imported. `ray` takes the plan (`kdverify.claims.plan`) before the first test runs and submits every missing
model as one task with declared resources (CPUs; a GPU where CUDA is present), a student as soon as its
teacher is ready: the teacher reaches the student's task through Ray's object store, not a shared disk.
A task returns the checkpoint's bytes; the driver verifies them (seal, weights sha256, cache key) and
writes the cache entry under the same per-entry lock as a local run, so later local runs, xdist workers
and Ray tasks share one cache. A test waits only for the models it needs.

A local Ray started by kdverify binds and talks on 127.0.0.1 only (Ray's single-machine mode, chosen
before Ray is imported); `--kd-ray-address` joins an existing cluster instead (`auto`, `ray://host:port`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from kdverify.cache.store import Executor, ModelCache
from kdverify.errors import KdverifyError, first_line
from kdverify.registry import Registry

if TYPE_CHECKING:
    from kdverify.cache.spec import ModelSpec, PlannedModel

LOOPBACK = "127.0.0.1"
TASK_RETRIES = 2  # default: a worker that dies mid-task (killed, out of memory) is retried this often, then ERROR


class LocalExecutor:
    """Nothing ahead of time: the cache trains each model in this process when a claim first needs it."""

    def __init__(self, **_: Any) -> None:
        pass

    def start(self, plan: list[PlannedModel], cache: ModelCache) -> None:
        pass

    def fetch(self, spec: ModelSpec) -> tuple[bytes, str] | None:
        return None

    def holds_lock(self, spec: ModelSpec) -> bool:
        return False

    def release(self, spec: ModelSpec) -> None:
        pass

    def close(self, cancel: bool = False) -> None:
        pass


@dataclass
class TaskSettings:
    """What a training task needs besides its recipe, identical on every node."""

    budget: str
    data_root: str | None = None
    deterministic: bool = False
    imports: list[str] = field(default_factory=list)  # modules that register a user's models, data, recipes
    recipe_files: list[str] = field(default_factory=list)
    cpus: int = 1


def train_task(recipe: dict[str, Any], teacher: tuple[bytes, str] | None, settings: TaskSettings) -> tuple[bytes, str]:
    """Runs on a Ray worker: train one model, return its sealed checkpoint bytes and where it was trained."""

    import torch

    from kdverify.cache.checkpoint import checkpoint_bytes, checkpoint_from_bytes, state_digest
    from kdverify.cache.pinned import load_pinned
    from kdverify.cache.spec import resolve
    from kdverify.cache.store import trained_payload
    from kdverify.data import load_dataset
    from kdverify.startup import import_user_modules, load_recipe_files
    from kdverify.train.denormals import flush_denormals
    from kdverify.train.determinism import cache_key_settings, set_deterministic
    from kdverify.train.loop import TRAINER_VERSION, fit
    from kdverify.train.recipes import Recipe

    flush_denormals()  # before this worker's first parallel op, so its OpenMP threads inherit the mode
    import_user_modules(settings.imports)  # the driver's, so the task knows the user's recipes and models
    load_recipe_files(settings.recipe_files)
    if settings.deterministic:
        set_deterministic()
    else:
        torch.set_num_threads(max(1, settings.cpus))  # the CPUs the task declared, as a local run uses its cores
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_recipe = Recipe.from_dict(recipe)
    spec = resolve(model_recipe.name, settings.budget, seed=model_recipe.seed)
    dataset = load_dataset(model_recipe.dataset, settings.data_root, device)
    teacher_model, teacher_weights = None, None
    if model_recipe.teacher:
        if teacher is None:  # a pinned teacher ships with kdverify on every node
            ckpt = load_pinned(spec.teacher.recipe, device)
        else:
            ckpt = checkpoint_from_bytes(teacher[0], f"the teacher of {spec.label}", device)
        teacher_model = ckpt.model.to(device)
        teacher_weights = state_digest(teacher_model)
    key = spec.key(dataset.variant, dataset.checksum, TRAINER_VERSION, cache_key_settings(device), teacher_weights)
    result = fit(model_recipe, dataset, teacher=teacher_model, progress=None)
    where = f"Ray node {socket.gethostname()}"
    payload = trained_payload(result, model_recipe, dataset, key, teacher_weights, trained_on=where)
    return checkpoint_bytes(payload), where


class RayExecutor:
    """Every missing model of a plan as one Ray task, students after (and fed by) their teachers."""

    def __init__(self, address: str | None = None, retries: int = TASK_RETRIES, budget: str = "ci",
                 data_root: str | None = None, deterministic: bool = False, imports: list[str] | None = None,
                 recipe_files: list[str] | None = None, say: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.retries = retries
        self.settings = TaskSettings(budget, data_root, deterministic, list(imports or []), list(recipe_files or []))
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._refs: dict[tuple[str, int], Any] = {}
        self._started: dict[tuple[str, int], float] = {}
        self._expected: dict[tuple[str, int], float | None] = {}
        self._teachers: dict[tuple[str, int], Any] = {}
        self._locks: dict[tuple[str, int], Any] = {}  # entry locks held while a task trains the entry
        self._owns_ray = False

    def connect(self) -> None:
        """Join the cluster at `address`, or start a local Ray on 127.0.0.1; any failure is one line."""
        if self.address is None:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # single-machine mode: loopback only (read on import)
            # The tasks are the run's training, not background work: Ray's default niceness (15) let any other
            # process on the machine starve them. A value the user set stays.
            os.environ.setdefault("RAY_worker_niceness", "0")
        try:
            import ray
        except ImportError:
            raise KdverifyError("--kd-executor ray needs Ray: pip install 'kdverify[ray]'") from None
        if ray.is_initialized():
            return
        if self.address not in (None, "auto"):
            _probe(self.address)  # Ray itself retries an unreachable address for minutes
        try:
            if self.address is None:
                # the driver's modules (--kd-import's too), inherited by the workers Ray starts before any task
                with _environment({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}):
                    ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - unreachable address, bad scheme, no cluster: one line
            raise KdverifyError(f"--kd-ray-address {self.address or '(local)'}: cannot start or reach Ray: "
                                f"{first_line(exc)}") from None
        self._owns_ray = True

    def start(self, plan: list[PlannedModel], cache: ModelCache) -> None:
        """Submit every model the plan must train, in plan order (teachers first); a teacher the driver's cache
        holds goes to its students' tasks through the object store too. Where an entry's key is known now, its
        lock is taken for the whole remote training: a model another session is training is not submitted
        (the cache waits for that session's entry instead), so sessions sharing a cache train each key once."""
        import ray

        self.connect()
        gpus = 1 if _has_cuda() else 0
        self.settings.cpus = 1 if gpus else max(1, min(2, int(ray.cluster_resources().get("CPU", 1))))
        remote = ray.remote(train_task).options(num_cpus=self.settings.cpus, num_gpus=gpus,
                                                max_retries=self.retries, retry_exceptions=False)
        for item in plan:
            if not item.to_train:
                continue
            teacher = item.spec.teacher
            teacher_ref = None
            if teacher is not None and not teacher.pinned:
                teacher_ref = self._refs.get((teacher.name, teacher.seed)) or self._put_cached(teacher, cache)
                if teacher_ref is None:
                    continue  # its teacher is neither planned nor cached: the local cache trains both
            if not self._lock_planned(item.spec, cache):
                continue
            self._refs[(item.spec.name, item.spec.seed)] = remote.remote(item.spec.recipe.to_dict(), teacher_ref,
                                                                         self.settings)
            self._started[(item.spec.name, item.spec.seed)] = time.perf_counter()
            self._expected[(item.spec.name, item.spec.seed)] = item.seconds
        if self._refs:
            self.say(f"kdverify: {len(self._refs)} model(s) submitted to Ray "
                      f"({int(ray.cluster_resources().get('CPU', 0))} CPUs in the cluster)")

    def _lock_planned(self, spec: ModelSpec, cache: ModelCache) -> bool:
        """Take the entry's lock now when its file name is known; False: another session holds it (or just
        filled the entry), so this one must not train it too."""
        from filelock import FileLock, Timeout

        from kdverify.locks import lock_path

        path = cache.planned_path(spec)
        if path is None:
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.say(f"kdverify: {spec.label} is being trained by another session: its entry is awaited, not "
                     "trained again")
            return False
        if path.is_file():
            lock.release()
            return False
        self._locks[(spec.name, spec.seed)] = lock
        return True

    def holds_lock(self, spec: ModelSpec) -> bool:
        return (spec.name, spec.seed) in self._locks

    def release(self, spec: ModelSpec) -> None:
        lock = self._locks.pop((spec.name, spec.seed), None)
        if lock is not None:
            lock.release()

    def _put_cached(self, spec: ModelSpec, cache: ModelCache) -> Any:
        import ray

        path = cache.entry_of(spec)
        if path is None:
            return None
        ref = ray.put((path.read_bytes(), "cache"))
        self._teachers[(spec.name, spec.seed)] = ref  # kept alive for the students' tasks, never fetched as a task
        return ref

    def fetch(self, spec: ModelSpec) -> tuple[bytes, str] | None:
        """The task's result for `spec` (waiting for it), None when it was not submitted; a task that raised
        or whose workers kept dying is one line naming the model."""
        ref = self._refs.pop((spec.name, spec.seed), None)
        if ref is None:
            return None
        import ray

        started = self._started.pop((spec.name, spec.seed), time.perf_counter())
        expected = self._expected.pop((spec.name, spec.seed), None)
        waited = time.perf_counter()
        while True:
            ready, _ = ray.wait([ref], timeout=30)
            if ready:
                break
            about = f", about {expected:.0f} s of training expected" if expected else ""
            self.say(f"kdverify: waiting for Ray to train {spec.label}: submitted "
                     f"{time.perf_counter() - started:.0f} s ago, waited {time.perf_counter() - waited:.0f} s{about}")
        self.say(f"kdverify: {spec.label} came back from Ray after {time.perf_counter() - started:.0f} s")
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise KdverifyError(f"Ray task {spec.label} failed: {type(cause).__name__}: {first_line(cause)}") from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.RayError) as exc:
            retries = f"{self.retries} retr{'y' if self.retries == 1 else 'ies'}"
            raise KdverifyError(f"Ray task {spec.label} failed after {retries}: "
                                f"{type(exc).__name__}: {first_line(exc)}") from None

    def close(self, cancel: bool = False) -> None:
        """Cancel what is still running (Ctrl-C, a failed session); stop a Ray this executor started."""
        try:
            import ray
        except ImportError:
            return
        if cancel:
            for ref in self._refs.values():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - finished or gone already
                    pass
        self._refs.clear()
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while a local Ray starts: its daemons, and the workers they start, inherit them.
    (A runtime_env would do it too, but its workers are started per task, while the default ones sit idle.)"""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _probe(address: str, timeout: float = 5.0) -> None:
    """A TCP connection to `host:port` (or `ray://host:port`), or a one-line error naming the address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or LOOPBACK, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise KdverifyError(f"--kd-ray-address {address}: cannot start or reach Ray: {reason}") from None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


EXECUTORS: Registry[Callable[..., Executor]] = Registry(
    "executor", "kdverify.cache.executors", "kdverify.cache.executors.EXECUTORS.register(name, factory)")
EXECUTORS.register("local", LocalExecutor)
EXECUTORS.register("ray", RayExecutor)
