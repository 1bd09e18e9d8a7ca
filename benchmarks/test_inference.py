"""Inference: teacher vs distilled student, PyTorch eager vs ONNX Runtime fp32 vs int8, batch 1 and 256.

Pairs: the user's --bench-teacher vs --bench-student checkpoints, else the built-in ones
(`benchmarks._pairs.BUILT_IN`: Hinton's MLP teacher vs its student, the tutorial's DeepNN vs
LightNN), whose weights come from the newest trained checkpoint in the kdverify model cache or
kdverify's pinned teacher, else fresh initialisation (the summary says which). Input shape,
class count, normalisation and label of each model come from its checkpoint. ONNX files are
exported once per session (fp32 `kdverify.export.onnx.export_model`, int8
`kdverify.export.quantize.quantize_int8`) and run by `kdverify.export.validate.ort_session` (intra_op N,
inter_op 1, spinning off); PyTorch runs in `torch.inference_mode()` with
`torch.set_num_threads(N)`, N = --bench-threads (default 1).

Each pytest-benchmark round is exactly one call (`pedantic(iterations=1)`), so
`benchmark.stats.stats.data` holds per-call times and p50/p90/p99 are percentiles of those.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks import _pairs as P
from benchmarks import _support as S
from benchmarks._zoo import Zoo


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One case per pair, batch, role and runtime; the pairs are known only once the options are read."""
    cases = [(pair.name, batch, role, runtime) for pair in metafunc.config.stash[P.PAIRS_KEY]
             for batch in S.BATCHES for role in P.ROLES for runtime in S.RUNTIMES]
    metafunc.parametrize("pair,batch,role,runtime", cases, ids=[f"{p}-{role}-{rt}-b{b}" for p, b, role, rt in cases])


def test_inference(benchmark, zoo: Zoo, bench_settings: S.Settings, bench_results: list, inference_threads: int,
                   pair: str, batch: int, role: str, runtime: str) -> None:
    entry = zoo.model(pair, role)
    x = zoo.inputs(entry, batch)
    onnx_bytes = None
    if runtime == "torch-eager":
        model = entry.model

        def call():  # noqa: ANN202
            return model(x)

        mode = torch.inference_mode()
    else:
        precision = runtime.removeprefix("ort-")
        session = zoo.session(entry, precision)
        onnx_bytes = entry.onnx[precision].stat().st_size
        feed = {session.get_inputs()[0].name: x.numpy()}

        def call():  # noqa: ANN202
            return session.run(None, feed)

        mode = contextlib.nullcontext()

    benchmark.group = f"{pair} b={batch}"
    with mode:
        rounds, warmup = S.warm_up_and_plan(call, batch, bench_settings.rounds_scale)
        out = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    logits = out if isinstance(out, torch.Tensor) else torch.from_numpy(out[0])
    assert tuple(logits.shape) == (batch, entry.num_classes)

    info = benchmark.extra_info
    errors = f"{entry.test_errors}/{entry.test_total}" if entry.test_errors is not None else None
    info.update(kind="inference", pair=pair, role=role, label=entry.label, arch=entry.arch, dataset=entry.dataset,
                runtime=runtime, batch=batch, threads=inference_threads, warmup_calls=warmup,
                params=entry.params, flops_per_sample=entry.flops, onnx_bytes=onnx_bytes,
                weights=entry.weights, trained=entry.trained,
                test_errors=errors if runtime != "ort-int8" else None)
    if benchmark.stats is not None:  # None under --benchmark-disable: the test is then a smoke test
        info.update(S.latency_stats(benchmark.stats.stats.data, batch))
    bench_results.append(info)
