"""Headroom is a rule: every built-in gated claim that trains a model has a committed reference sample over
seeds and numeric paths (`kdverify/references/`), none of it stale, and none of those claims is FRAGILE."""

import dataclasses
import json

import pytest

from kdverify.claims.core import Claim, Threshold
from kdverify.claims.paper import CLAIMS
from kdverify.claims.references import headroom, headroom_table, load_references, recipe_fingerprints


def test_every_built_in_gated_trained_claim_has_a_fresh_reference_with_headroom():
    rows = headroom(CLAIMS)
    assert rows, "no gated trained claims?"
    bad = [r.row() for r in rows if r.status != "ok"]
    assert not bad, "claims without headroom over their committed reference samples:\n" + headroom_table(
        [r for r in rows if r.status != "ok"])


def _claim(threshold: Threshold, recipe: str = "hinton-student-hard") -> Claim:
    return Claim("t.hard", "test", "hard student", "errors_on_test", {"recipe": recipe}, 146, "errors", threshold)


def _write(folder, name, claim, values, recipes=None):
    entry = {"dataset": "mnist", "values": values, "seed_offsets": list(range(len(values))),
             "recipes": recipes or recipe_fingerprints(claim)}
    data = {"format": 1, "path": name, "provenance": {"data": {"mnist": {"variant": "mnist"}}},
            "claims": {claim.id: entry}}
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_pooled_over_paths_and_fragile_when_the_next_run_could_fail(tmp_path):
    claim = _claim(Threshold("<=", 161, "paper x 1.10"))
    _write(tmp_path, "cpu-avx512-2t", claim, [142, 147, 145, 150, 144])
    _write(tmp_path, "cpu-avx2-2t", claim, [147, 149, 146, 151, 143])
    (row,) = headroom([claim], folder=tmp_path)
    assert row.reference.paths == {"cpu-avx2-2t": 5, "cpu-avx512-2t": 5} and row.status == "ok"
    tight = dataclasses.replace(claim, threshold=Threshold("<=", 152, "tight"))
    (row,) = headroom([tight], folder=tmp_path)
    assert row.status == "FRAGILE"  # every value passes, but the spread says the next one may not


def test_a_sample_of_changed_recipes_is_stale_and_a_claim_without_one_is_missing(tmp_path):
    claim = _claim(Threshold("<=", 161))
    _write(tmp_path, "cpu-avx512-2t", claim, [142, 147, 145], recipes={"hinton-student-hard": "0" * 16})
    refs = load_references([claim], folder=tmp_path)
    assert refs[claim.id].values == [] and refs[claim.id].stale == ["cpu-avx512-2t"]
    assert headroom([claim], folder=tmp_path)[0].status == "STALE"
    other = dataclasses.replace(claim, id="t.other")
    assert headroom([other], folder=tmp_path)[0].status == "MISSING"


@pytest.mark.parametrize("op,values,limit,status", [(">=", [72.1, 72.5, 71.9, 72.8, 72.3], 68.4, "ok"),
                                                    (">=", [69.0, 72.5, 71.9, 72.8, 68.9], 68.4, "FRAGILE")])
def test_at_least_thresholds_look_at_the_low_side(tmp_path, op, values, limit, status):
    claim = _claim(Threshold(op, limit))
    _write(tmp_path, "cpu-avx512-2t", claim, values)
    assert headroom([claim], folder=tmp_path)[0].status == status


@pytest.mark.parametrize("machine,settings,name", [
    ("Intel(R) Xeon(R) Processor, 2 CPUs, AVX-512, AVX512 kernels, 2 threads",
     {"device_type": "cpu", "cpu_kernels": "AVX512", "threads": 2}, "cpu-avx512-2t-intel"),
    ("AMD EPYC 9R14, 2 CPUs, AVX-512, AVX2 kernels, 1 threads",
     {"device_type": "cpu", "cpu_kernels": "AVX2", "threads": 1, "deterministic": True}, "cpu-avx2-1t-amd-det"),
    ("aarch64, 8 CPUs, DEFAULT kernels, 8 threads", {"device_type": "cpu", "cpu_kernels": "DEFAULT", "threads": 8},
     "cpu-default-8t-arm"),
    ("", {"device_type": "cpu", "cpu_kernels": "AVX2", "threads": 2}, "cpu-avx2-2t"),
    ("NVIDIA H200", {"device_type": "cuda", "gpu": "NVIDIA H200"}, "cuda-nvidia-h200"),
])
def test_a_path_is_named_by_device_kernels_threads_and_cpu_maker(machine, settings, name):
    from kdverify.claims.references import path_name

    assert path_name(settings, machine) == name


def test_every_committed_reference_file_is_named_by_its_path():
    from kdverify.claims.references import read_files
    from kdverify.paths import REFERENCE_DIR

    files = sorted(p.stem for p in REFERENCE_DIR.glob("*.json"))
    assert files and sorted(d["path"] for d in read_files()) == files
