"""The claims report: a terminal table, Markdown + JSON files, and pictures.

Every threshold is the published number with a stated tolerance (the `rule` column), the same in
every budget; the report says how each model behind a claim was obtained (pinned, trained now,
from cache). Pictures (confusion matrices, per-epoch test-error curves with the papers' numbers
as dashed lines) need matplotlib, an optional extra (`pip install kdverify[plots]`); without it
the Markdown carries the same numbers as text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdverify.cache.records import Trained
from kdverify.claims.core import METRIC_DEFINITIONS, STANDIN_VARIANTS, Verdict
from kdverify.io import atomic_write_bytes

COLUMNS = ("claim", "paper", "measured", "threshold", "rule", "verdict", "n", "reference", "seconds", "data")
CONFUSION_RECIPES = ("hinton-teacher", "hinton-student-hard", "hinton-student-kd")
BUDGET_NOTES = {
    "ci": "Budget `ci`: the teachers are the pinned checkpoints shipped in `kdverify/teachers/` (their sha256 is in "
          "the provenance), every student is trained now with kdverify's fast recipes.",
    "paper": "Budget `paper`: every model, teachers included, is trained from scratch with kdverify's fast recipes.",
    "original": "Budget `original`: every model is trained with the works' own recipes.",
}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:,.0f}" if value.is_integer() and abs(value) >= 100 else f"{value:.4g}"


def reference_text(v: Verdict) -> str:
    """'136-151 (n=10, 2 paths)' from the committed reference sample; '!' marks a value outside it."""
    ref = v.reference
    if not ref or not ref.get("n"):
        return "stale" if ref and ref.get("stale") else "-"
    paths = len(ref.get("paths", {}))
    text = f"{_fmt(ref['min'])}-{_fmt(ref['max'])} (n={ref['n']}, {paths} path{'s' if paths != 1 else ''})"
    return ("! outside " + text) if v.outside_reference else text


def _n_text(v: Verdict) -> str:
    if v.n > 1 and v.bound is not None:
        return f"{v.n} (bound {_fmt(v.bound)})"
    return "1" if v.claim.recipes else "-"


def rows(verdicts: Sequence[Verdict]) -> list[tuple[str, ...]]:
    return [(v.claim.id, _fmt(v.claim.paper_value), _fmt(v.measured), str(v.threshold), v.threshold.rule or "-",
             v.verdict, _n_text(v), reference_text(v), f"{v.seconds:.0f}", v.data_variant or "-") for v in verdicts]


def table(verdicts: Sequence[Verdict]) -> str:
    """Fixed-width table for the terminal."""
    body = rows(verdicts)
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(COLUMNS)]
    lines = [COLUMNS, ["-" * w for w in widths], *body]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines)


def summary_line(verdicts: Sequence[Verdict]) -> str:
    """Counts; a pass that re-measures a model another claim judged is named, XPASS is a failure."""
    n = Counter(v.verdict for v in verdicts)
    again = sum(v.verdict == "PASS" and bool(v.claim.same_model_as) for v in verdicts)
    passes = f"{n['PASS']} passed" + (f" ({again} of them re-measure a model judged by another claim)" if again else "")
    why = [f"{n['XPASS']} of them xpassed (strict: failure)"] if n["XPASS"] else []
    why += [f"{n['ERROR']} of them could not be measured"] if n["ERROR"] else []
    fails = f"{n['FAIL'] + n['XPASS'] + n['ERROR']} failed" + (f" ({'; '.join(why)})" if why else "")
    unsure = f"{n['INCONCLUSIVE']} inconclusive, " if n["INCONCLUSIVE"] else ""
    return (f"claims: {passes}, {fails}, {unsure}{n['XFAIL']} xfailed, {n['REPORT']} reported (not gated), "
            f"{n['SKIP']} skipped")


def budget_note(verdicts: Sequence[Verdict]) -> str:
    """Says plainly what the thresholds are, how the budget obtained its models, and what the data is."""
    if not verdicts:
        return ""
    published = [v for v in verdicts if v.claim.paper_value is not None]
    if published:
        notes = [("Thresholds are the published numbers with the stated tolerance (column `rule`), fixed before "
                  "measuring and the same in every budget; budgets differ only in how the models are obtained.")]
    else:
        notes = ["Thresholds are the claims' own (column `rule`): none of these claims has a published number."]
    if published and len(published) < len(verdicts):
        notes[0] += " Claims without a published number (paper `-`) carry their own threshold."
    pinned = any(": pinned (" in v.provenance for v in verdicts)
    for budget in sorted({v.budget for v in verdicts}):
        if budget == "ci" and not pinned:  # a user's own claims: no pinned teacher behind any of them
            notes.append("Budget `ci`: every model was trained now or taken from the cache (no pinned teacher).")
        else:
            notes.append(BUDGET_NOTES.get(budget, f"Budget `{budget}`."))
    standin = sorted({v.data_variant for v in verdicts if v.data_variant in STANDIN_VARIANTS})
    if standin:
        from kdverify.claims.paper import CIFAR_STANDIN_TOLERANCE_PTS, CIFAR_TOLERANCE_PTS

        notes.append(f"CIFAR-10 here is the lossy JPEG stand-in ({', '.join(standin)}), not the original: the CIFAR "
                     f"absolute thresholds use the stated stand-in allowance of tutorial - "
                     f"{CIFAR_STANDIN_TOLERANCE_PTS:.1f} pt instead of - {CIFAR_TOLERANCE_PTS:.1f} pt (named in "
                     "the `rule` column); relative claims keep their thresholds.")
    return "\n\n".join(notes)


def settings_text(settings: Mapping[str, Any], with_machine: bool = False) -> str:
    """'torch 2.13.0+cpu, cpu avx2 kernels, 2 threads' (+ deterministic, machine, versions, data) or ''."""
    if not settings:
        return ""
    parts = []
    if "kdverify" in settings:
        parts.append(f"kdverify {settings['kdverify']} (trainer {settings.get('trainer', '?')})")
    parts += [f"torch {settings.get('torch', '?')}",
              f"{settings.get('device_type', '?')} {settings.get('cpu_kernels') or settings.get('gpu') or ''}".strip()
              + (" kernels" if settings.get("cpu_kernels") else ""),
              f"{settings.get('threads', '?')} threads"]
    if settings.get("deterministic"):
        parts.append("deterministic")
    if with_machine and settings.get("machine"):
        parts.append(str(settings["machine"]))
    if settings.get("data_variant"):
        parts.append(f"data {settings['data_variant']} ({settings.get('data_checksum', '')})")
    return ", ".join(parts)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _sorted_models(models: Sequence[Trained]) -> list[Trained]:
    return sorted(models, key=lambda m: (m.recipe.dataset, m.recipe.name, m.recipe.seed))


def _detail(v: Verdict) -> str:
    same = f"same model as `{v.claim.same_model_as}`" if v.claim.same_model_as else ""
    return "; ".join(s for s in (same, v.detail) if s)


def markdown(verdicts: Sequence[Verdict], pictures: Sequence[str], models: Sequence[Trained]) -> str:
    head = [*COLUMNS, "detail", "provenance"]
    out = ["# kdverify claims report", "", summary_line(verdicts), "", budget_note(verdicts), "",
           "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in (*r, _detail(v), v.provenance or "-")) + " |"
            for r, v in zip(rows(verdicts), verdicts)]
    environments = sorted({settings_text(v.environment, with_machine=True) for v in verdicts if v.environment})
    if environments:
        out += ["", "Measured with: " + "; ".join(environments)]
    out += ["", "## Models", "", "| recipe | seed | source | weights sha256 | train seconds | machine | trained with |"
            " test errors |", "|" + " --- |" * 8]
    for m in _sorted_models(models):
        ev = m.evaluation
        out.append("| " + " | ".join(_cell(c) for c in (
            m.recipe.name, m.recipe.seed, m.source, m.weights[:12] or "-", f"{m.seconds:.0f}", m.machine or "-",
            settings_text(m.settings) or "-", f"{ev.errors}/{ev.total} ({100 * ev.error_rate:.2f}%)")) + " |")
    sampled = [v for v in verdicts if v.n > 1]
    if sampled:
        out += ["", "## Verdicts over seeds (`--kd-seeds`)", "",
                "PASS when the one-sided 95% confidence bound on the mean (Student's t) is inside the threshold, "
                "FAIL when the mean is outside, INCONCLUSIVE otherwise. Seed offsets are added to every student "
                "recipe's own seed; teachers stay fixed.", "",
                "| claim | seeds | values | mean | bound | threshold | verdict |", "|" + " --- |" * 7]
        out += ["| " + " | ".join(_cell(c) for c in (
            v.claim.id, ", ".join(f"+{s}" for s in v.seeds), ", ".join(_fmt(x) for x in v.values), _fmt(v.mean),
            _fmt(v.bound), str(v.threshold), v.verdict)) + " |" for v in sampled]
    metrics = sorted({v.claim.metric for v in verdicts})
    out += ["", "## What each number is", "",
            "Every value is the final-epoch model's, never the best epoch on the test set. `n` is how many seeds the "
            "verdict rests on; `reference` is the committed sample of the claim over seeds and numeric paths "
            "(`kdverify/references/`, one seed per value), `!` where the measured value lies outside it.", ""]
    out += [f"- `{m}`: {METRIC_DEFINITIONS.get(m, 'a metric registered by the user')}" for m in metrics]
    noted = [v for v in verdicts if v.claim.note]
    if noted:
        out += ["", "## Notes on claim design", ""] + [f"- `{v.claim.id}`: {v.claim.note}" for v in noted]
    declared = [v for v in verdicts if v.claim.xfail]
    if declared:
        out += ["", "## Declared unreproducible (xfail)", "",
                ("XPASS: it passed although declared unreproducible; strict, so it fails until the declaration "
                 "is removed."), ""]
        out += [f"- `{v.claim.id}` ({v.verdict}, measured {_fmt(v.measured)}): {v.claim.xfail}" for v in declared]
    confusions = [m for m in _sorted_models(models) if m.recipe.name in CONFUSION_RECIPES]
    if confusions:
        out += ["", "## Confusion matrices (rows: true class, columns: predicted)", ""]
    for m in confusions:
        out += [f"### {m.recipe.name} (seed {m.recipe.seed}): {m.evaluation.errors} errors", "", "```"]
        out += [" ".join(f"{n:5d}" for n in row) for row in m.evaluation.confusion.tolist()] + ["```", ""]
    if pictures:
        out += ["", "## Pictures", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in pictures]
    return "\n".join(out) + "\n"


def paper_error_pct(verdicts: Sequence[Verdict], test_totals: Mapping[str, int]) -> dict[str, float]:
    """Recipe name -> the paper's test error % of its model, from the `errors_on_test` / `accuracy_pct`
    claims among `verdicts` that carry a published number (per-class counts are left out).

    A count becomes a percentage of the recipe's test total (`test_totals`); a claim that re-measures
    another claim's model gives its number only when no claim of its own does.
    """
    lines: dict[str, float] = {}
    for v in sorted(verdicts, key=lambda v: bool(v.claim.same_model_as)):
        claim, recipe = v.claim, v.claim.args.get("recipe")
        if claim.paper_value is None or not isinstance(recipe, str) or recipe in lines:
            continue
        if claim.metric == "accuracy_pct":
            lines[recipe] = 100 - claim.paper_value
        elif claim.metric == "errors_on_test" and claim.args.get("cls") is None:
            if claim.args.get("percent"):
                lines[recipe] = float(claim.paper_value)
            elif test_totals.get(recipe):
                lines[recipe] = 100 * claim.paper_value / test_totals[recipe]
    return lines


def write_pictures(folder: Path, models: Sequence[Trained], verdicts: Sequence[Verdict] = ()) -> list[str]:
    """Confusion-matrix heatmaps and test-error curves as PNG; [] when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy
    except ImportError:
        return []
    models = _sorted_models(models)
    written = []
    confusions = [m for m in models if m.recipe.name in CONFUSION_RECIPES]
    if confusions:
        fig, axes = plt.subplots(1, len(confusions), figsize=(4.2 * len(confusions), 4), squeeze=False)
        for ax, m in zip(axes[0], confusions):
            conf = m.evaluation.confusion.clone()
            conf.fill_diagonal_(0)  # the diagonal dwarfs the mistakes; show only the mistakes
            cells, half = conf.numpy(), int(conf.max()) / 2
            ax.imshow(cells, cmap="magma")
            ax.set_title(f"{m.recipe.name} s{m.recipe.seed}\n{m.evaluation.errors} errors (off-diagonal)", fontsize=9)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_xticks(range(cells.shape[1]))
            ax.set_yticks(range(cells.shape[0]))
            for (i, j), n in numpy.ndenumerate(cells):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=6, color="w" if n < half else "k")
        fig.tight_layout()
        written.append(_save(fig, folder / "confusion.png"))
        plt.close(fig)
    paper = paper_error_pct(verdicts, {m.recipe.name: m.evaluation.total for m in models})
    curves = [m for m in models if m.history]
    for dataset in sorted({m.recipe.dataset for m in curves}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colours: dict[str, str] = {}
        for m in (m for m in curves if m.recipe.dataset == dataset):
            name, total = m.recipe.name, max(m.evaluation.total, 1)
            first = name not in colours
            line, = ax.plot([h.epoch for h in m.history], [100 * h.test_errors / total for h in m.history],
                            marker="o", ms=2, color=colours.get(name), label=f"{name} s{m.recipe.seed}")
            colours.setdefault(name, line.get_color())
            if first and name in paper and (paper[name] > 0 or dataset != "mnist"):
                ax.axhline(paper[name], color=colours[name], ls="--", lw=1, label=f"{name}: paper {paper[name]:.3g}%")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error %")
        if dataset == "mnist":
            ax.set_yscale("log")
        dashed = any(name in paper for name in colours)
        ax.set_title(f"{dataset}: test errors per epoch" + (" (dashed: the paper's number)" if dashed else ""))
        ax.legend(fontsize=6)
        fig.tight_layout()
        written.append(_save(fig, folder / f"curves-{dataset}.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> str:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return str(path)


def report_json(verdicts: Sequence[Verdict], models: Sequence[Trained]) -> dict[str, Any]:
    return {"summary": summary_line(verdicts), "note": budget_note(verdicts),
            "budget": ", ".join(sorted({v.budget for v in verdicts})),
            "claims": [v.to_dict() for v in verdicts],
            "models": [{"recipe": m.recipe.name, "seed": m.recipe.seed, "key": m.key, "source": m.source,
                        "weights": m.weights, "train_seconds": round(m.seconds, 1), "machine": m.machine,
                        "settings": dict(m.settings),
                        "test_errors": m.evaluation.errors, "test_total": m.evaluation.total,
                        "curve": [h.test_errors for h in m.history]} for m in _sorted_models(models)]}


def write_report(folder: str | Path, verdicts: Sequence[Verdict], models: Sequence[Trained]) -> list[str]:
    """report.md, report.json and PNGs into `folder`; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = write_pictures(folder, models, verdicts)
    atomic_write_bytes(folder / "report.md", markdown(verdicts, pictures, models).encode())
    atomic_write_bytes(folder / "report.json", json.dumps(report_json(verdicts, models), indent=2).encode())
    return [str(folder / "report.md"), str(folder / "report.json"), *pictures]
