"""``RESULTS.md`` of the position study: per seed, both variants' held-out loss and their paired
gap, and the decision the rule in ``README.md`` draws from them."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import load_runs, write_generated  # noqa: E402

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_gap(runs: dict, a: str = "consecutive", b: str = "shared") -> dict[int, float]:
    """Per seed present in both: ``a``'s held-out loss (nats) minus ``b``'s."""
    both = sorted(runs.get(a, {}).keys() & runs.get(b, {}).keys())
    return {s: runs[a][s]["val"]["loss"] - runs[b][s]["val"]["loss"] for s in both}


def interval(gaps: list[float]) -> tuple[float, float, float]:
    """Mean and the 95% t-interval of the mean of paired gaps (needs two or more)."""
    mean = statistics.mean(gaps)
    half = T95[len(gaps) - 1] * statistics.stdev(gaps) / math.sqrt(len(gaps))
    return mean, mean - half, mean + half


def decide(gaps: list[float]) -> str:
    """The README's rule: "consecutive" only if its paired gap's 95% interval lies below zero;
    otherwise "shared"."""
    if len(gaps) < 2:
        return "undecided (fewer than two paired seeds)"
    return "consecutive" if interval(gaps)[2] < 0 else "shared"


def table(results: Path) -> str:
    runs = load_runs(results)
    gaps = paired_gap(runs)
    rows = ["| seed | shared: loss (ppl) | consecutive: loss (ppl) | gap (nats) |",
            "|---:|---:|---:|---:|"]
    for s, gap in gaps.items():
        cells = [f"{runs[v][s]['val']['loss']:.4f} ({runs[v][s]['val']['ppl']:.1f})"
                 for v in ("shared", "consecutive")]
        rows.append(f"| {s} | {cells[0]} | {cells[1]} | {gap:+.4f} |")
    lines = ["\n".join(rows), ""]
    values = list(gaps.values())
    if len(values) >= 2:
        mean, low, high = interval(values)
        lines.append(f"Paired gap, consecutive − shared, over {len(values)} seeds: "
                     f"{mean:+.4f} nats (95% CI [{low:+.4f}, {high:+.4f}]; seed sd "
                     f"{statistics.stdev(values):.4f}).")
    lines.append(f"Decision by the rule above: **{decide(values)}**.")
    if values:
        any_run = next(iter(runs["shared"].values()))
        lines.append(f"\nEach run: {any_run['tokens']:,} training tokens, {any_run['params']:,} "
                     f"parameters; machine: {any_run['machine']}.")
    return "\n".join(lines)


def write_report(results: Path = HERE / "results") -> None:
    write_generated(HERE / "RESULTS.md", table(results))


if __name__ == "__main__":
    write_report()
