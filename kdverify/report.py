"""The claims report: a terminal table, Markdown + JSON files, and pictures.

Pictures (confusion matrices, per-epoch test-error curves) need matplotlib, an optional extra
(`pip install kdverify[plots]`); without it the Markdown carries the same numbers as text tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from kdverify.cache import Trained
from kdverify.claims import Verdict
from kdverify.data import atomic_write_bytes

COLUMNS = ("claim", "paper", "measured", "threshold", "verdict", "seconds", "device", "data")
CONFUSION_RECIPES = ("hinton-teacher", "hinton-student-hard", "hinton-student-kd")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 100 else f"{value:.4g}"


def rows(verdicts: Sequence[Verdict]) -> list[tuple[str, ...]]:
    return [(v.claim.id, _fmt(v.claim.paper_value), _fmt(v.measured), str(v.threshold or "-"), v.verdict,
             f"{v.seconds:.0f}", v.device, v.data_variant or "-") for v in verdicts]


def table(verdicts: Sequence[Verdict]) -> str:
    """Fixed-width table for the terminal."""
    body = rows(verdicts)
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in body])


def summary_line(verdicts: Sequence[Verdict]) -> str:
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("PASS", "FAIL", "SKIP")}
    return f"claims: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def budget_note(verdicts: Sequence[Verdict]) -> str:
    """Says plainly when the measured numbers are not the papers' (cheaper budget, lossy data)."""
    notes = []
    if any(v.budget == "ci" for v in verdicts):
        notes.append("Budget `ci`: short CPU schedules; thresholds come from seeds measured on a 2-core CPU, "
                     "not from the papers. Where `measured` is far from `paper`, the ci budget does not reach "
                     "the paper's number; `--kd-budget paper` runs the papers' own recipes.")
    if any(v.data_variant == "cifar10-jpeg-q75" for v in verdicts):
        notes.append("CIFAR-10 here is the lossy JPEG q75 stand-in, not the original: absolute accuracies run "
                     "below the tutorial's; only relative claims are comparable.")
    return "\n\n".join(notes)


def markdown(verdicts: Sequence[Verdict], pictures: Sequence[str], models: Sequence[Trained]) -> str:
    out = ["# kdverify claims report", "", summary_line(verdicts), "", budget_note(verdicts), "",
           "| " + " | ".join(COLUMNS) + " | detail |", "|" + " --- |" * (len(COLUMNS) + 1)]
    out += ["| " + " | ".join(r) + f" | {v.detail} |" for r, v in zip(rows(verdicts), verdicts)]
    out += ["", "## How each ci threshold was set", ""]
    out += [f"- `{v.claim.id}`: {v.claim.ci_basis or 'not calibrated'}" for v in verdicts]
    if pictures:
        out += ["", "## Pictures", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in pictures]
    out += ["", "## Confusion matrices (rows: true class, columns: predicted)", ""]
    for m in models:
        if m.recipe.name in CONFUSION_RECIPES:
            out += [f"### {m.recipe.name} (seed {m.recipe.seed}): {m.evaluation.errors} errors", "", "```"]
            out += [" ".join(f"{n:5d}" for n in row) for row in m.evaluation.confusion.tolist()] + ["```", ""]
    return "\n".join(out) + "\n"


def write_pictures(folder: Path, models: Sequence[Trained]) -> list[str]:
    """Confusion-matrix heatmaps and test-error curves as PNG; [] when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy
    except ImportError:
        return []
    written = []
    confusions = [m for m in models if m.recipe.name in CONFUSION_RECIPES]
    if confusions:
        fig, axes = plt.subplots(1, len(confusions), figsize=(4.2 * len(confusions), 4), squeeze=False)
        for ax, m in zip(axes[0], confusions):
            conf = m.evaluation.confusion.clone()
            conf.fill_diagonal_(0)  # the diagonal dwarfs the mistakes; show only the mistakes
            cells, half = conf.numpy(), int(conf.max()) / 2
            ax.imshow(cells, cmap="magma")
            ax.set_title(f"{m.recipe.name}\n{m.evaluation.errors} errors (off-diagonal)", fontsize=9)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_xticks(range(10))
            ax.set_yticks(range(10))
            for (i, j), n in numpy.ndenumerate(cells):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=6, color="w" if n < half else "k")
        fig.tight_layout()
        written.append(_save(fig, folder / "confusion.png"))
        plt.close(fig)
    curves = [m for m in models if m.history]
    for dataset in sorted({m.recipe.dataset for m in curves}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in curves:
            if m.recipe.dataset == dataset:
                ax.plot([h.epoch for h in m.history], [100 * h.test_errors / m.evaluation.total for h in m.history],
                        marker="o", ms=2, label=f"{m.recipe.name} s{m.recipe.seed}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error %")
        if dataset == "mnist":
            ax.set_yscale("log")
        ax.set_title(f"{dataset}: test errors per epoch")
        ax.legend(fontsize=6)
        fig.tight_layout()
        written.append(_save(fig, folder / f"curves-{dataset}.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> str:  # noqa: ANN001
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return str(path)


def write_report(folder: str | Path, verdicts: Sequence[Verdict], models: Sequence[Trained]) -> list[str]:
    """report.md, report.json and PNGs into `folder`; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = write_pictures(folder, models)
    atomic_write_bytes(folder / "report.md", markdown(verdicts, pictures, models).encode())
    payload = {"summary": summary_line(verdicts), "note": budget_note(verdicts),
               "claims": [v.to_dict() for v in verdicts],
               "models": [{"recipe": m.recipe.name, "seed": m.recipe.seed, "key": m.key,
                           "test_errors": m.evaluation.errors, "from_cache": m.from_cache,
                           "train_seconds": round(m.seconds, 1),
                           "curve": [h.test_errors for h in m.history]} for m in models]}
    atomic_write_bytes(folder / "report.json", json.dumps(payload, indent=2).encode())
    return [str(folder / "report.md"), str(folder / "report.json"), *pictures]
