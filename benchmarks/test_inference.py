"""Inference: teacher vs distilled student, PyTorch eager vs ONNX Runtime fp32 vs int8, batch 1 and 256.

Pairs: Hinton's MLP teacher (1200 hidden, 1x28x28) vs its student (800 hidden), and the
tutorial's DeepNN vs LightNN (3x32x32). Weights come from the newest trained checkpoint in the
kdverify model cache, else fresh initialisation (the summary says which). ONNX files are
exported once per session with `kdverify.export` (fp32 `export_model`, int8 `quantize_int8`) and
run by `kdverify.export.ort_session` (intra_op N, inter_op 1, spinning off); PyTorch runs in
`torch.inference_mode()` with `torch.set_num_threads(N)`, N = --bench-threads (default 1).

Each pytest-benchmark round is exactly one call (`pedantic(iterations=1)`), so
`benchmark.stats.stats.data` holds per-call times and p50/p90/p99 are percentiles of those.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks import _support as S

CASES = [(pair, batch, role, runtime) for pair in S.PAIRS for batch in S.BATCHES
         for role in ("teacher", "student") for runtime in S.RUNTIMES]


@pytest.mark.parametrize("pair,batch,role,runtime", CASES,
                         ids=[f"{p}-{role}-{rt}-b{b}" for p, b, role, rt in CASES])
def test_inference(benchmark, zoo: S.Zoo, bench_settings: S.Settings, bench_results: list, inference_threads: int,
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
    assert tuple(logits.shape) == (batch, 10)

    info = benchmark.extra_info
    errors = f"{entry.test_errors}/{entry.test_total}" if entry.test_errors is not None else None
    info.update(kind="inference", pair=pair, role=role, label=entry.label, recipe=entry.recipe, arch=entry.arch,
                runtime=runtime, batch=batch, threads=inference_threads, warmup_calls=warmup,
                params=entry.params, flops_per_sample=entry.flops, onnx_bytes=onnx_bytes,
                weights=entry.weights, trained=entry.trained,
                test_errors=errors if runtime != "ort-int8" else None)
    if benchmark.stats is not None:  # None under --benchmark-disable: the test is then a smoke test
        info.update(S.latency_stats(benchmark.stats.stats.data, batch))
    bench_results.append(info)
