"""Table-1-style summary and loss curves of the finished runs in ``results/``.

    python experiments/small_scale/report.py

Rewrites the generated part of RESULTS.md (between its markers) and ``loss_curves.png``; the
discussion around the markers is kept.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import curve, load_runs as _load_runs, mean_std, paired, write_generated  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LABELS = {
    "ntp": "NTP", "kd": "KD", "pause": "Pause", "cocomix": "CoCoMix",
    "cocomix_activation": "CoCoMix, activation labels", "concept_only": "concept loss only",
    "mixing_only": "mixing only", "cocomix_add": "CoCoMix, add instead of interleave",
    "ntp_narrow": "NTP on CoCoMix's backbone (not widened)",
}
SUITES = {  # variant-name prefix → heading of its table
    "": "Students with 4 blocks, concept inserted before block 2",
    "deep_": "Deeper students: 8 blocks, concept inserted before block 3",
}


def suite_of(variant: str) -> str:
    return next((p for p in SUITES if p and variant.startswith(p)), "")


PAIRS = [  # (variant, reference): per-seed differences of validation perplexity
    ("cocomix", "ntp"), ("kd", "ntp"), ("concept_only", "ntp"), ("concept_only", "cocomix"),
    ("cocomix_activation", "cocomix"), ("cocomix_add", "ntp"), ("cocomix_add", "cocomix"),
    ("ntp_narrow", "ntp"), ("cocomix", "ntp_narrow"), ("concept_only", "ntp_narrow"),
]


def table(runs: dict[str, dict[int, dict]], prefix: str = "") -> str:
    lines = ["| model | d | params | tokens | seeds | val ppl | Δ ppl vs NTP (paired) | "
             "last-word acc % | last-word ppl | train min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in LABELS:
        variant = prefix + kind
        if variant not in runs:
            continue
        rs = list(runs[variant].values())
        ppl = [r["val"]["ppl"] for r in rs]
        deltas = list(paired(runs, variant, prefix + "ntp").values())
        delta = "—" if kind == "ntp" or not deltas else mean_std(deltas, sign="+")
        acc = [100 * r["lambada"]["acc"] for r in rs]
        word_ppl = [r["lambada"]["ppl"] for r in rs]
        lines.append(f"| {LABELS[kind]} | {rs[0]['n_embd']} | {rs[0]['params'] / 1e6:.2f} M | "
                     f"{rs[0]['tokens'] / 1e6:.2f} M | {len(rs)} | {mean_std(ppl)} | {delta} | "
                     f"{mean_std(acc)} | {mean_std(word_ppl, 0)} | {statistics.mean(r['train_s'] for r in rs) / 60:.1f} |")
    if prefix:
        return "\n".join(lines + ["", pair_table(runs, prefix)])
    extra = []
    if (RESULTS / "teacher.json").exists():
        t = json.loads((RESULTS / "teacher.json").read_text())
        extra.append(f"teacher: validation perplexity {t['val']['ppl']:.1f} after "
                     f"{t['tokens'] / 1e6:.2f}M tokens")
    if (RESULTS / "sae.json").exists():
        q = json.loads((RESULTS / "sae.json").read_text())
        extra.append(f"SAE: FVU {q['fvu']:.3f}, L0 {q['l0']:.0f}, dead {100 * q['dead_fraction']:.1f}%, "
                     f"teacher loss {q['clean_loss']:.3f} → {q['spliced_loss']:.3f} nats with the "
                     f"reconstruction spliced in (Δ {q['delta_loss']:+.3f})")
    machines = sorted({r["machine"] for v in runs.values() for r in v.values()})
    return "\n".join(lines + [""] + [f"- {e}" for e in extra] +
                      [f"- machine: {m}" for m in machines] + ["", pair_table(runs)])


def pair_table(runs: dict[str, dict[int, dict]], prefix: str = "") -> str:
    """Paired differences of validation perplexity, seed by seed, then mean ± std."""
    seeds = sorted({s for v in runs if suite_of(v) == prefix for s in runs[v]})
    lines = ["| comparison | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for variant, reference in PAIRS:
        d = paired(runs, prefix + variant, prefix + reference)
        if d:
            cells = [f"{d[s]:+.1f}" if s in d else "" for s in seeds]
            lines.append(f"| {LABELS[variant]} − {LABELS[reference]} | " + " | ".join(cells) +
                         f" | {mean_std(list(d.values()), 1, '+')} |")
    return "\n".join(lines)


def curves(name: str) -> dict[str, list[tuple[int, float]]]:
    return curve(RESULTS / "curves" / f"{name}.jsonl", ("ntp_loss", "val_ntp_loss"))


def load_runs() -> dict[str, dict[int, dict]]:
    return _load_runs(RESULTS)


def plot(runs: dict[str, dict[int, dict]], path: Path, prefix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, kind in enumerate(v for v in LABELS if prefix + v in runs):
        variant = prefix + kind
        per_seed = [curves(f"{variant}-s{s}") for s in sorted(runs[variant])]
        tokens = runs[variant][min(runs[variant])]["tokens"]
        steps = max(p for p, _ in per_seed[0]["ntp_loss"])
        for key, ax in (("ntp_loss", train_ax), ("val_ntp_loss", val_ax)):
            by_step: dict[int, list[float]] = defaultdict(list)
            for c in per_seed:
                for step, value in c[key]:
                    by_step[step].append(value)
            xs = sorted(by_step)
            ys = [statistics.mean(by_step[x]) for x in xs]
            if key == "ntp_loss":  # moving average over 5 logged steps
                ys = [statistics.mean(ys[max(0, j - 4):j + 1]) for j in range(len(ys))]
            ax.plot([x * tokens / steps / 1e6 for x in xs], ys, "-" if key == "ntp_loss" else "o-",
                    color=f"C{i}", label=LABELS[kind])
    train_ax.set_title("training next-token loss (mean over seeds)")
    val_ax.set_title("validation next-token loss (mean over seeds)")
    for ax in (train_ax, val_ax):
        ax.set_xlabel("tokens (M)")
        ax.set_ylabel("nats")
        ax.grid(alpha=0.3)
    val_ax.legend(fontsize=8)
    lo = min(v for variant in runs if suite_of(variant) == prefix for s in runs[variant]
             for _, v in curves(f"{variant}-s{s}")["val_ntp_loss"])
    val_ax.set_ylim(lo - 0.05, lo + 1.0)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def report() -> None:
    runs = load_runs()
    suites = [p for p in SUITES if any(suite_of(v) == p for v in runs)]
    parts = [(f"### {SUITES[p]}\n\n" if len(suites) > 1 else "") + table(runs, p) for p in suites]
    write_generated(HERE / "RESULTS.md", "\n\n".join(parts))
    for p in suites:
        plot(runs, HERE / f"loss_curves{'_' + p.rstrip('_') if p else ''}.png", p)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # no options
    report()
