"""The plugin's command-line and ini options (one group, one prefix: `--kd-`), parsed once into `Settings`."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from kdverify.paths import named_data_root


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kdverify", "kdverify: knowledge-distillation claims")
    group.addoption("--kd-data-root", default=None, metavar="DIR",
                    help="dataset root in torchvision's layout (default: $KDVERIFY_DATA)")
    group.addoption("--kd-require-data", choices=("auto", "yes", "no"), default="auto",
                    help="missing data fails the claims instead of skipping them; auto = yes when a data root is "
                         "given (--kd-data-root or $KDVERIFY_DATA). Corrupt data always fails. (default: auto)")
    group.addoption("--kd-budget", choices=("ci", "paper", "original"), default="ci",
                    help="how models are obtained (thresholds are the same in every budget): ci = pinned teachers, "
                         "students trained (default); paper = everything trained with kdverify's fast recipes; "
                         "original = the works' own recipes (GPU)")
    group.addoption("--kd-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to train; auto = CUDA when present; with -n and several GPUs worker k uses "
                         "cuda:(k mod n) (default: auto)")
    group.addoption("--kd-cache", default=None, metavar="DIR",
                    help="trained-model cache, shareable between processes and machines (default: "
                         "$KDVERIFY_CACHE/models or ~/.cache/kdverify/models)")
    group.addoption("--kd-deterministic", action="store_true", default=False,
                    help="1 thread and deterministic kernels: bit-identical weights across processes (slower)")
    group.addoption("--kd-report", default=None, metavar="DIR",
                    help="write report.md, report.json and PNG pictures of the claims here")
    group.addoption("--kd-import", action="append", default=[], metavar="MODULE",
                    help="import MODULE first (it may register models, datasets, objectives, recipes); repeatable")
    group.addoption("--kd-seeds", type=_count(1, 1000, "seed count"), default=1, metavar="N",
                    help="judge every claim that trains a student at N seeds (teachers fixed): PASS when the one-sided "
                         "95%% confidence bound on the mean passes, FAIL when the mean fails, else INCONCLUSIVE "
                         "(default: 1, today's verdict beside the committed reference range)")
    group.addoption("--kd-inconclusive", choices=("fail", "pass"), default="fail",
                    help="whether an INCONCLUSIVE verdict fails the run (default: fail)")
    group.addoption("--kd-recipe-file", action="append", default=[], metavar="TOML",
                    help="register the recipes of a TOML file (as `kdverify --recipe-file`) before collection; "
                         "repeatable; ini option `kd_recipe_file` (paths relative to the rootdir)")
    group.addoption("--kd-plan", action="store_true", default=False,
                    help="print every model the selected claims need (teachers first, cached or not, expected cost) "
                         "and exit without training")
    group.addoption("--kd-gate-only", action="store_true", default=False,
                    help="train only what the claims this run can gate need: a claim it can only report (not gated, "
                         "or gated from more seeds than --kd-seeds) is measured where its models are at hand "
                         "(needed by a gated claim, pinned or cached), else skipped with the models it would train")
    group.addoption("--kd-executor", choices=("local", "ray"), default="local",
                    help="where missing models train: local = in this process when a claim needs one (default); "
                         "ray = all of them planned up front as Ray tasks (pip install 'kdverify[ray]')")
    group.addoption("--kd-ray-address", default=None, metavar="ADDR",
                    help="the Ray cluster to use with --kd-executor ray: auto, ray://host:port (default: start a "
                         "local Ray bound to 127.0.0.1)")
    group.addoption("--kd-ray-retries", type=_count(0, 100, "retry count"), default=2, metavar="N",
                    help="with --kd-executor ray, run a task again this often when its worker dies (a node lost or "
                         "preempted, out of memory) before its claims ERROR (default: 2)")
    parser.addini("kd_import", type="linelist", default=[], help="modules kdverify imports first (like --kd-import)")
    parser.addini("kd_recipe_file", type="linelist", default=[],
                  help="TOML recipe files kdverify registers first (like --kd-recipe-file), relative to the rootdir")


PATH_OPTIONS = ("--kd-data-root", "--kd-cache", "--kd-report", "--kd-recipe-file")
CONFIG_FILES = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def check_paths_left_the_rootdir_alone(config: pytest.Config) -> None:
    """pytest finds its rootdir before any plugin adds options, so in `--kd-cache DIR` (a space, not `=`) it takes
    an existing DIR for a test path: a DIR outside the project moves the rootdir above it, and the project's
    config (testpaths, markers, kd_import) is silently lost (pytest-dev/pytest#8846). One line with the fix instead.

    Moved means: the rootdir is above the working directory, a config file lies between them (where pytest,
    starting here, would have stopped), and a path given after a space lies outside that folder."""
    here = Path(config.invocation_params.dir).resolve()
    root = config.rootpath.resolve()
    if config.getoption("rootdir", None) or root == here or not here.is_relative_to(root):
        return
    project = next((d for d in (here, *here.parents) if d != root and d.is_relative_to(root)
                    and any((d / name).is_file() for name in CONFIG_FILES)), None)
    if project is None:
        return
    args = [str(a) for a in config.invocation_params.args]
    for option, value in zip(args, args[1:]):
        path = (here / value).resolve()
        if option in PATH_OPTIONS and path.exists() and not path.is_relative_to(project):
            raise pytest.UsageError(
                f"{option} {value}: write {option}={value} (with '='): pytest took the existing path after the "
                f"space for a test path, so its rootdir became {config.rootpath}, not {project}")


def _count(low: int, high: int, what: str) -> Callable[[str], int]:
    """An option's whole-number argument from `low` to `high`: anything else is argparse's one-line usage error."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} from {low} to {high}")
        return n

    return parse


@dataclass(frozen=True)
class Settings:
    """Every --kd- option and ini value, read once in pytest_configure (ini modules first, then the options')."""

    data_root: str | None
    require_data: str
    budget: str
    device: str
    cache: str | None
    deterministic: bool
    report: str | None
    imports: tuple[str, ...]
    seeds: int
    inconclusive: str
    recipe_files: tuple[str, ...]  # absolute paths
    plan: bool
    gate_only: bool
    executor: str
    ray_address: str | None
    ray_retries: int
    rootdir: str

    @classmethod
    def from_config(cls, config: pytest.Config) -> "Settings":
        opt = config.getoption
        root = config.rootpath
        return cls(
            data_root=named_data_root(opt("--kd-data-root")), require_data=opt("--kd-require-data"),
            budget=opt("--kd-budget"), device=opt("--kd-device"), cache=opt("--kd-cache"),
            deterministic=opt("--kd-deterministic"), report=opt("--kd-report"),
            imports=tuple(dict.fromkeys([*config.getini("kd_import"), *opt("--kd-import")])), seeds=opt("--kd-seeds"),
            inconclusive=opt("--kd-inconclusive"),
            recipe_files=tuple([str(root / p) for p in config.getini("kd_recipe_file")]
                               + [os.path.abspath(p) for p in opt("--kd-recipe-file")]),
            plan=opt("--kd-plan"), gate_only=opt("--kd-gate-only"), executor=opt("--kd-executor"),
            ray_address=opt("--kd-ray-address"), ray_retries=opt("--kd-ray-retries"),
            rootdir=str(root))

    @property
    def data_required(self) -> bool:
        """Missing data fails (instead of skipping) when asked, or when a data root was given."""
        return self.require_data == "yes" or (self.require_data == "auto" and self.data_root is not None)

    def check_output_folders(self) -> None:
        """--kd-report and --kd-cache are folders kdverify writes into: checked before anything is collected or
        trained (a report that cannot be written after an hour of claims loses the hour)."""
        for option, folder in (("--kd-report", self.report), ("--kd-cache", self.cache)):
            if not folder:
                continue
            path = os.path.abspath(folder)
            if os.path.exists(path) and not os.path.isdir(path):
                raise pytest.UsageError(f"{option} {folder}: exists and is not a folder")
            existing = path
            while not os.path.exists(existing):
                existing = os.path.dirname(existing)
            if not os.access(existing, os.W_OK | os.X_OK):
                raise pytest.UsageError(f"{option} {folder}: {existing} is not writable")
