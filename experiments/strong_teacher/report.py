"""Table, paired gaps against training tokens and their fitted trend, from ``results/``.

    python experiments/strong_teacher/report.py

Rewrites the generated part of RESULTS.md (between its markers), ``gap_curves.png`` and, once
a study at another budget (``run.py --scale``, ``results/xS``) has finished runs,
``budget_gaps.png``, and a table of any replicate set (``results/replicate*``); the discussion
around the markers is kept.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import curve, load_runs, mean_std, paired, write_generated  # noqa: E402
from trend import FIT_FROM, band, crossing, fit_trend, fmt_tokens, line_sd  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LABELS = {
    "ntp": "NTP (widened)", "cocomix": "CoCoMix, SmolLM2 concepts",
    "concept_only": "concept loss only, SmolLM2 concepts", "cocomix_own": "CoCoMix, own small teacher",
    "ntp_base": "NTP at the students' width (not widened)",
}
COMPARED = ("cocomix", "concept_only", "cocomix_own", "ntp_base")  # against each reference
REFERENCES = {"ntp": "NTP (widened)", "ntp_base": "NTP at d 128"}  # paired, seed by seed


def val_curve(variant: str, seed: int) -> dict[int, float]:
    """Validation next-token loss at every evaluation: ``{step: nats}``."""
    return dict(curve(RESULTS / "curves" / f"{variant}-s{seed}.jsonl", ("val_ntp_loss",))
                ["val_ntp_loss"])


def budgets(root: Path | None = None) -> dict[float, Path]:
    """``{scale: results directory}`` of every budget: 1 is ``results/``, S is ``results/xS``
    (or those of the replicate ``root``)."""
    root = root or RESULTS
    out = {1.0: root}
    for path in root.glob("x*"):
        try:
            out[float(path.name[1:])] = path
        except ValueError:
            continue
    return dict(sorted(out.items()))


def budget_gaps(variant: str, ref: str, root: Path | None = None) -> dict[int, dict[int, float]]:
    """Per seed: ``{tokens: ln(ppl of variant / ppl of ref)}`` at the end of each budget's runs,
    on the whole held-out split (the paired gap in nats, every run a whole schedule)."""
    out: dict[int, dict[int, float]] = {}
    if variant == ref:
        return out
    for results in budgets(root).values():
        runs = load_runs(results)
        a, b = runs.get(variant, {}), runs.get(ref, {})
        for seed in sorted(a.keys() & b.keys()):
            out.setdefault(seed, {})[a[seed]["tokens"]] = math.log(a[seed]["val"]["ppl"]
                                                                   / b[seed]["val"]["ppl"])
    return out


def gap_curves(runs, variant: str, ref: str = "ntp") -> dict[int, dict[int, float]]:
    """Per seed: ``{tokens: val loss of variant − val loss of ref}`` at the shared evaluations."""
    out = {}
    if variant == ref:
        return out
    for seed in sorted(runs.get(variant, {}).keys() & runs.get(ref, {}).keys()):
        a, b = val_curve(variant, seed), val_curve(ref, seed)
        per_step = runs[variant][seed]["tokens"] / max(a)
        out[seed] = {round(s * per_step): a[s] - b[s] for s in sorted(a.keys() & b.keys())}
    return out


def table(runs) -> str:
    lines = ["| model | d | params | tokens | seeds | val ppl | Δ ppl vs NTP (paired) | "
             "Δ ppl vs NTP at d 128 (paired) | concept recall (val) | last-word acc % | train min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, label in LABELS.items():
        if variant not in runs:
            continue
        rs = list(runs[variant].values())
        deltas = list(paired(runs, variant, "ntp").values())
        base = list(paired(runs, variant, "ntp_base").values())
        recall = [r for r in (last_value(variant, s, "val_concept_recall")
                              for s in runs[variant]) if r is not None]
        lines.append(
            f"| {label} | {rs[0]['n_embd']} | {rs[0]['params'] / 1e6:.2f} M | "
            f"{rs[0]['tokens'] / 1e6:.2f} M | {len(rs)} | {mean_std([r['val']['ppl'] for r in rs])} | "
            f"{mean_std(deltas, sign='+') if deltas and variant != 'ntp' else '—'} | "
            f"{mean_std(base, sign='+') if base and variant != 'ntp_base' else '—'} | "
            f"{mean_std(recall, 3) if recall else '—'} | "
            f"{mean_std([100 * r['lambada']['acc'] for r in rs])} | "
            f"{statistics.mean(r['train_s'] for r in rs) / 60:.1f} |")
    return "\n".join(lines)


def last_value(variant: str, seed: int, key: str) -> float | None:
    rows = curve(RESULTS / "curves" / f"{variant}-s{seed}.jsonl", (key,))[key]
    return rows[-1][1] if rows else None


def trend_table(runs) -> str:
    lines = ["| comparison | seeds | gap at the end (nats, mean ± std) | slope per e-fold of tokens "
             "(± s.e.) | trend reaches 0 at |", "|---|---:|---:|---:|---:|"]
    for ref, variant in ((r, v) for r in REFERENCES for v in COMPARED):
        gaps = gap_curves(runs, variant, ref)
        fit = fit_trend(gaps)
        if not fit:
            continue
        ends = [per_seed[max(per_seed)] for per_seed in gaps.values()]
        lines.append(f"| {LABELS[variant]} − {REFERENCES[ref]} | {len(gaps)} | {mean_std(ends, 3, '+')} | "
                     f"{fit['b']:+.4f} ± {fit['se_b']:.4f} | {crossing(fit, gaps)} |")
    return "\n".join(lines)


def budget_comparisons() -> dict[tuple[str, str], dict[int, dict[int, float]]]:
    """``{(variant, reference): budget_gaps}`` of the comparisons made at more than one budget."""
    compared = {(variant, ref): budget_gaps(variant, ref) for ref in REFERENCES
                for variant in COMPARED}
    return {k: g for k, g in compared.items() if len({t for p in g.values() for t in p}) > 1}


def budget_table() -> str:
    """The paired gap at the end of every budget's runs, and the line fitted through them."""
    compared = budget_comparisons()
    sizes = sorted({t for g in compared.values() for p in g.values() for t in p})
    rows = []
    for (variant, ref), gaps in compared.items():
        fit = fit_trend(gaps, since=0)
        rows.append(f"| {LABELS[variant]} − {REFERENCES[ref]} | {budget_cells(gaps, sizes)} | "
                    + (f"{fit['b']:+.4f} ± {fit['se_b']:.4f} | {crossing(fit, gaps)} |" if fit
                       else "— | — |"))
    if not rows:
        return ""
    return "\n".join([f"| comparison, at the end of each budget (nats) | {budget_head(sizes)} | "
                      "slope per e-fold of budget (± s.e.) | fitted line reaches 0 at |",
                      "|---|" + "---:|" * (len(sizes) + 2)] + rows)


def budget_head(sizes: list[int]) -> str:
    return " | ".join(f"gap at {fmt_tokens(t)} (seeds)" for t in sizes)


def budget_cells(gaps: dict[int, dict[int, float]], sizes: list[int]) -> str:
    """Mean ± std of the seeds' gaps at each budget, and how many seeds."""
    cells = [[p[t] for p in gaps.values() if t in p] for t in sizes]
    return " | ".join(f"{mean_std(c, 3, '+')} ({len(c)})" if c else "—" for c in cells)


def replicates() -> dict[str, Path]:
    """The sets of runs made from another draw of the tokenizer and the own teacher
    (``run.py --results results/replicate…``), by name."""
    return {p.name: p for p in sorted(RESULTS.glob("replicate*")) if p.is_dir()}


def all_sets() -> dict[str, Path]:
    """The first set of runs (``results/``) and every replicate, by name."""
    return {"first": RESULTS, **replicates()}


def set_gaps(variant: str, ref: str) -> dict[str, dict[int, dict[int, float]]]:
    """``{set name: budget_gaps}`` of one comparison in every set."""
    return {name: budget_gaps(variant, ref, root) for name, root in all_sets().items()}


def pooled(per_set: dict[str, dict[int, dict[int, float]]]) -> dict[tuple[str, int], dict]:
    """Every run of every set, keyed by (set, seed), for one line through all of them."""
    return {(name, seed): p for name, g in per_set.items() for seed, p in g.items()}


def replicate_table() -> str:
    """The budget gaps of every replicate beside the first set's, with each set's own teacher."""
    sets = all_sets()
    if len(sets) == 1:
        return ""
    compared = {(v, r): set_gaps(v, r) for r in REFERENCES for v in COMPARED}
    keep = {k: per_set for k, per_set in compared.items()
            if any(per_set[name] for name in sets if name != "first")}
    sizes = sorted({t for per_set in keep.values() for g in per_set.values() for p in g.values()
                    for t in p})
    rows = []
    for (variant, ref), per_set in keep.items():
        for name, gaps in per_set.items():
            teacher = sets[name] / "own_teacher.json"
            ppl = f"{json.loads(teacher.read_text())['teacher_val']['ppl']:.1f}" \
                if teacher.exists() else "—"
            rows.append(f"| {LABELS[variant]} − {REFERENCES[ref]} | {name} | {ppl} | "
                        f"{budget_cells(gaps, sizes)} |")
    if not rows:
        return ""
    fits = []
    for (variant, ref), per_set in keep.items():  # every run of every set, one line through all
        gaps = pooled(per_set)
        fit = fit_trend(gaps, since=0)
        if fit:
            fits.append(f"- {LABELS[variant]} − {REFERENCES[ref]}, the sets pooled "
                        f"({fit['points']} runs): slope {fit['b']:+.4f} ± {fit['se_b']:.4f} "
                        f"per e-fold of budget, fitted line reaches 0 at {crossing(fit, gaps)}"
                        f"{band(fit)}")
    return "\n".join([f"| comparison, at the end of each budget (nats) | set | own teacher val "
                      f"ppl | {budget_head(sizes)} |", "|---|---|---:|" + "---:|" * len(sizes)] + rows
                     + ([""] + fits if fits else []))


def quality(q: dict) -> str:
    """One line of an SAE's measured quality (``sae_analysis.evaluate_sae``)."""
    return (f"FVU {q['fvu']:.3f} (standardized {q['fvu_normalized']:.3f}), dead "
            f"{100 * q['dead_fraction']:.2f}%, Δ loss {q['delta_loss']:+.3f} nats")


def stores() -> str:
    """The teachers behind the labels: what ``run.py`` recorded in ``results/``."""
    out = []
    smol = HERE.parents[1] / "weights" / "smollm2-sae" / "manifest.json"
    if smol.exists():
        r = json.loads(smol.read_text())
        out.append(f"- SmolLM2-135M's SAE (`weights/smollm2-sae`, block {r['training']['layer']}, "
                   f"{r['training']['latents']} latents, k {r['training']['k']}): "
                   f"{quality(r['float16'])}")
    own = RESULTS / "own_teacher.json"
    if own.exists():
        r = json.loads(own.read_text())
        out.append(f"- own small teacher: validation perplexity {r['teacher_val']['ppl']:.1f}; "
                   f"its SAE: {quality(r['sae'])}")
    for name, label in (("smol", "SmolLM2-135M"), ("own", "own small teacher")):
        path = RESULTS / f"labels-{name}.json"
        if path.exists():
            m = json.loads(path.read_text())
            t = m["train"]
            out.append(f"- labels, {label}: {t['labelled'] / t['tokens']:.1%} of {t['tokens']:,} "
                       f"training tokens labelled, {m['sae']['latents']} latents, "
                       f"k_attr {m['k_attr']}, window {m['window']} / stride {m['stride']}")
    return "\n".join(out)


def plot(runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REFERENCES), figsize=(13, 4.5), sharey=True)
    for ax, (ref, ref_label) in zip(axes, REFERENCES.items()):
        plot_gaps(ax, runs, ref, ref_label)
    axes[0].set_ylabel("val loss − the reference's (nats)")
    fig.suptitle("paired gap to NTP (thin: seeds, dots: mean, dashed: fitted trend)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_budgets(path: Path) -> list[str]:
    """The paired gap at the end of each budget, every set of runs (dots: runs, marker: set;
    line: the set's mean) and one dashed line fitted through all runs of all sets, drawn on to
    where it reaches 0 when that is within 4× the largest budget, with its ±2 s.e. band.
    Returns the legends' entries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, dict] = {}
    for (variant, ref) in budget_comparisons():
        panels.setdefault(ref, {})[variant] = set_gaps(variant, ref)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), sharey=True,
                             squeeze=False)
    for ax, (ref, per_variant) in zip(axes[0], panels.items()):
        for variant, per_set in per_variant.items():
            color = f"C{COMPARED.index(variant)}"
            for (name, gaps), marker in zip(per_set.items(), "osD^v"):
                if not gaps:
                    continue
                tokens = sorted({t for p in gaps.values() for t in p})
                for p in gaps.values():
                    ax.plot([t / 1e6 for t in p], list(p.values()), marker, color=color,
                            alpha=0.4, ms=4)
                mean = [statistics.mean(p[t] for p in gaps.values() if t in p) for t in tokens]
                ax.plot([t / 1e6 for t in tokens], mean, marker + "-", color=color,
                        alpha=1 if name == "first" else 0.6,
                        label=LABELS[variant] + ("" if len(per_set) == 1 else f", {name} set"))
            runs = pooled(per_set)
            tokens = sorted({t for p in runs.values() for t in p})
            fit = fit_trend(runs, since=0)
            if fit:
                end = min(fit["crossing"] or max(tokens), 4 * max(tokens))
                xs = np.geomspace(min(tokens), max(end, max(tokens)), 50)
                line = fit["a"] + fit["b"] * np.log(xs)
                ax.plot(xs / 1e6, line, "--", color=color,
                        label=f"line through all {fit['points']} runs")
                sd = line_sd(fit, np.log(xs))
                ax.fill_between(xs / 1e6, line - 2 * sd, line + 2 * sd, color=color, alpha=0.12,
                                lw=0, label="its ±2 s.e. band")
        style(ax, f"against {REFERENCES[ref]}", "training tokens of the whole run (M)")
    axes[0][0].set_ylabel("val loss − the reference's at the end (nats)")
    fig.suptitle("paired gap to NTP at the end of runs of each budget")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [label for ax in axes[0] for label in ax.get_legend_handles_labels()[1]]


def style(ax, title: str, xlabel: str) -> None:
    """The axes both figures share: log tokens in M, the zero line, a legend when labelled."""
    import matplotlib.ticker

    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_gaps(ax, runs, ref: str, ref_label: str) -> None:
    for i, variant in enumerate(COMPARED):
        gaps = gap_curves(runs, variant, ref)
        if not gaps:
            continue
        for per_seed in gaps.values():
            ax.plot([t / 1e6 for t in per_seed], list(per_seed.values()), color=f"C{i}", alpha=0.3)
        tokens = sorted(set.intersection(*(set(p) for p in gaps.values())))
        mean = [statistics.mean(p[t] for p in gaps.values()) for t in tokens]
        ax.plot([t / 1e6 for t in tokens], mean, "o-", color=f"C{i}", label=LABELS[variant])
        fit = fit_trend(gaps)
        if fit:
            xs = np.linspace(FIT_FROM * max(tokens), max(tokens), 50)
            ax.plot(xs / 1e6, fit["a"] + fit["b"] * np.log(xs), "--", color=f"C{i}")
    style(ax, f"against {ref_label}", "training tokens (M)")


def report() -> None:
    runs = load_runs(RESULTS)
    if not runs:
        write_generated(HERE / "RESULTS.md", "\n\n".join(p for p in ("No student has finished "
                                                                      "yet.", stores()) if p))
        return
    machines = sorted({r["machine"] for v in runs.values() for r in v.values()})
    across = budget_table()
    body = "\n\n".join(p for p in (table(runs), stores(), "\n".join(f"- machine: {m}" for m in machines),
                                   trend_table(runs), across, replicate_table()) if p)
    write_generated(HERE / "RESULTS.md", body)
    if any(gap_curves(runs, v, r) for v in COMPARED for r in REFERENCES):
        plot(runs, HERE / "gap_curves.png")
    if across:
        plot_budgets(HERE / "budget_gaps.png")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # no options
    report()
