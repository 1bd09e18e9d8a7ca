"""Numbers derived across benchmarks, and the `kdverify benchmarks summary` printed after pytest-benchmark's tables."""

from __future__ import annotations

from typing import Any

from benchmarks._pairs import Model
from benchmarks._support import RUNTIMES, TRAIN_LOOPS, Settings, header_line
from benchmarks._zoo import Zoo


def _find(records: list[dict], **match: Any) -> dict | None:
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def derive(records: list[dict]) -> None:
    """Cross-benchmark numbers, written into each benchmark's extra_info (so saved JSON has them too)."""
    inference = [r for r in records if r.get("kind") == "inference" and "p50_ms" in r]
    for r in inference:
        base = _find(inference, pair=r["pair"], batch=r["batch"], role="teacher", runtime="torch-eager")
        r["speedup_vs_teacher_eager"] = base["p50_ms"] / r["p50_ms"] if base else None
    train = [r for r in records if r.get("kind") == "train" and "samples_per_s" in r]
    for suffix in ("", "-1t"):
        ours, seed = _find(train, loop="kdverify" + suffix), _find(train, loop="seed-style" + suffix)
        if ours and seed:
            ours["ratio_vs_seed_style"] = seed["ratio_vs_seed_style"] = ours["samples_per_s"] / seed["samples_per_s"]


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _fmt_size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def _table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def summary_lines(records: list[dict], settings: Settings, zoo: Zoo | None) -> list[str]:
    lines = [header_line(settings)]
    inference = [r for r in records if r.get("kind") == "inference" and "p50_ms" in r]
    train = [r for r in records if r.get("kind") == "train" and "samples_per_s" in r]
    if inference:
        lines += _inference_lines(inference, zoo)
    if train:
        lines += [""] + _train_lines(train, settings)
    return lines


def _inference_lines(records: list[dict], zoo: Zoo | None) -> list[str]:
    lines = ["", ("Inference latency and throughput (random inputs; p50/p90/p99 over per-call times, "
                 "samples/s = batch / p50, vs T-eager = teacher torch-eager p50 / this p50 at the same batch)")]
    order = {name: i for i, name in enumerate(RUNTIMES)}
    pairs = list(dict.fromkeys(r["pair"] for r in records))  # in the order they ran
    records = sorted(records, key=lambda r: (pairs.index(r["pair"]), r["batch"], r["role"] != "teacher",
                                             order[r["runtime"]]))
    head = ["pair", "model", "runtime", "batch", "params", "ONNX size", "rounds", "p50 ms", "p90 ms", "p99 ms",
            "samples/s", "vs T-eager", "test errors"]
    rows = []
    for r in records:
        speedup = r.get("speedup_vs_teacher_eager")
        rows.append([r["pair"], r["label"], r["runtime"], r["batch"], f"{r['params']:,}",
                     _fmt_size(r.get("onnx_bytes")), r["rounds"],
                     _fmt_ms(r["p50_ms"]), _fmt_ms(r["p90_ms"]), _fmt_ms(r["p99_ms"]),
                     f"{r['samples_per_s']:,.0f}", f"{speedup:.2f}x" if speedup else "-", r.get("test_errors") or "-"])
    lines += _table(head, rows, right={3, 4, 5, 6, 7, 8, 9, 10, 11})
    if zoo is not None and zoo.models():
        lines += ["", ("Weights and test errors (PyTorch; the fp32 export computes the same function; int8 "
                      "accuracy is not measured here):")]
        width = max(len(m.label) for m in zoo.models())
        for m in zoo.models():
            quant = f", int8: {m.int8_method} quantisation" if m.int8_method else ""
            lines.append(f"  {m.role} {m.label:<{width}}  {m.weights}{quant}; test errors: {_errors(m)}")
        from kdverify.export.onnx import DEFAULT_OPSET
        from kdverify.export.quantize import CALIBRATION_SIZE

        lines.append(f"  ONNX: kdverify.export.onnx.export_model (opset {DEFAULT_OPSET}, dynamic batch) "
                     "+ quantize_int8, "
                     f"{zoo.export_seconds:.1f} s in all, untimed; static int8 is calibrated on "
                     f"{CALIBRATION_SIZE} random-pixel inputs")
    lines += ["", "Target checks (measured facts, not asserts):"]
    for pair in pairs:
        lines += [f"  [{pair}]"] + _checks(records, pair)
    return lines


def _errors(m: Model) -> str:
    counted = f"{m.test_errors}/{m.test_total} " if m.test_errors is not None else ""
    return counted + (m.test_note or "-")


def _checks(records: list[dict], pair: str) -> list[str]:
    get = lambda role, runtime, batch: _find(records, pair=pair, role=role, runtime=runtime, batch=batch)  # noqa: E731
    out = []
    s1, t1 = get("student", "ort-fp32", 1), get("teacher", "torch-eager", 1)
    if s1 and t1:
        half = t1["p50_ms"] / 2
        out.append(f"    (a) student ORT fp32 b=1 p50 {_fmt_ms(s1['p50_ms'])} ms vs 1/2 of teacher eager b=1 p50 "
                   f"({_fmt_ms(t1['p50_ms'])} / 2 = {_fmt_ms(half)} ms): {t1['p50_ms'] / s1['p50_ms']:.2f}x faster, "
                   f"target >= 2x -> {_verdict(s1['p50_ms'] <= half)}")
    else:
        out.append("    (a) not measured (needs student ort-fp32 b=1 and teacher torch-eager b=1)")
    s, t = get("student", "ort-fp32", 256), get("teacher", "ort-fp32", 256)
    if s and t:
        speedup, flop_ratio = t["p50_ms"] / s["p50_ms"], t["flops_per_sample"] / s["flops_per_sample"]
        out.append(f"    (b) b=256 ORT fp32 student/teacher speedup {speedup:.2f}x vs 80% of FLOP ratio "
                   f"(0.8 x {t['flops_per_sample'] / 1e6:.2f}/{s['flops_per_sample'] / 1e6:.2f} MFLOP = "
                   f"{0.8 * flop_ratio:.2f}x): {speedup / flop_ratio:.0%} of the FLOP ratio -> "
                   f"{_verdict(speedup >= 0.8 * flop_ratio)}")
    else:
        out.append("    (b) not measured (needs teacher and student ort-fp32 b=256)")
    q, f = get("student", "ort-int8", 256), get("student", "ort-fp32", 256)
    if q and f:
        ratio = f["p50_ms"] / q["p50_ms"]
        out.append(f"    (c) b=256 student ORT int8 p50 {_fmt_ms(q['p50_ms'])} ms vs fp32 {_fmt_ms(f['p50_ms'])} ms: "
                   f"int8 is {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}; size "
                   f"{_fmt_size(q.get('onnx_bytes'))} vs {_fmt_size(f.get('onnx_bytes'))} -> target int8 faster: "
                   f"{_verdict(ratio > 1)}")
    else:
        out.append("    (c) not measured (needs student ort-int8 and ort-fp32 b=256)")
    return out


def _train_lines(records: list[dict], settings: Settings) -> list[str]:
    first = records[0]
    lines = [(f"Training throughput: {first['model']}, batch {first['batch']}, {first['optimizer']}, "
             f"+-2 px jitter, synthetic uint8 {first['data']}; torch threads {settings.train_threads} (all cores "
             f"unless --bench-train-threads); per loop {first['warmup_steps']} warm-up steps, then up to "
             "150 timed steps (fewer when a loop would take over 30 s); glibc heap thresholds raised for both "
             f"loops (kdverify.train.cpu_memory): {'yes' if first.get('keep_freed_memory') else 'no (not glibc)'}")]
    head = ["loop", "threads", "steps", "samples/s", "ms/step p50", "ms/step p90", "faults/step", "what is timed"]
    order = list(TRAIN_LOOPS)
    rows = [[r["loop"], r["threads"], r["steps"], f"{r['samples_per_s']:,.0f}", _fmt_ms(r["p50_ms"]),
             _fmt_ms(r["p90_ms"]), f"{r.get('page_faults_per_step', float('nan')):.1f}", r["description"]]
            for r in sorted(records, key=lambda r: order.index(r["loop"]))]
    lines += ["  " + line for line in _table(head, rows, right={1, 2, 3, 4, 5, 6})]
    ours, seed = _find(records, loop="kdverify"), _find(records, loop="seed-style")
    ours_1t, seed_1t = _find(records, loop="kdverify-1t"), _find(records, loop="seed-style-1t")
    lines.append("  Target checks (measured facts, not asserts):")
    if ours and seed:
        ratio = ours["samples_per_s"] / seed["samples_per_s"]
        lines.append(f"    kdverify / seed-style samples/s = {ratio:.2f}x, target >= 2.5x -> "
                     f"{_verdict(ratio >= 2.5)}")
    else:
        lines.append("    kdverify / seed-style ratio not measured (needs both loops)")
    if ours_1t and seed_1t:
        ratio_1t = ours_1t["samples_per_s"] / seed_1t["samples_per_s"]
        lines.append(f"      reference at 1 torch thread each: kdverify-1t / seed-style-1t = {ratio_1t:.2f}x "
                     "(no OpenMP oversubscription in either main process)")
    if ours:
        frac = ours["flop_fraction_of_mm"]
        lines.append(f"    kdverify FLOP rate 6 x {ours['flops_per_sample'] / 2e6:.3f} M multiply-adds (= 3 x "
                     f"forward_flops {ours['flops_per_sample'] / 1e6:.3f} MFLOP) x {ours['samples_per_s']:,.0f} "
                     f"samples/s = {ours['achieved_gflops']:.1f} GFLOP/s = {frac:.0%} of torch.mm fp32 2048x2048 "
                     f"({ours['mm_gflops']:.1f} GFLOP/s, best of before/after, same process, {ours['threads']} "
                     f"threads), target >= 60% -> {_verdict(frac >= 0.6)}")
        lines.append(f"      (6 x forward_flops would count each multiply-add twice: "
                     f"{ours['achieved_gflops_6x_forward_flops']:.1f} GFLOP/s = {2 * frac:.0%}; not used)")
        if ours.get("fit_samples_per_s"):
            lines.append(f"    cross-check: kdverify.train.loop.fit() end to end, 1 epoch of {ours['fit_samples']:,} "
                         f"samples (incl. its first steps and a 10-image evaluation): "
                         f"{ours['fit_samples_per_s']:,.0f} samples/s")
    return lines
