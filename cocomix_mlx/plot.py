"""Loss curves of training runs (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError, DataError
from .files import refuse_existing


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{"loss": [(step, value), ...], "val_loss": [...]}`` from a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise DataError(f"no metrics.jsonl in {run_dir}; is it a training run directory?")
    curves: dict[str, list[tuple[int, float]]] = {"loss": [], "val_loss": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"corrupt line in {path}: {line[:60]!r}") from None
        for key in curves:
            if key in row and "step" in row:
                curves[key].append((row["step"], row[key]))
    return curves


def plot_runs(run_dirs: list[str | Path], out: str | Path, smooth: int = 1,
              force: bool = False) -> Path:
    """Training (moving average over ``smooth`` logged steps) and validation loss of every run
    on one figure, written to ``out`` (.png, .pdf or .svg)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError('plotting needs matplotlib: pip install "cocomix-mlx[plot]"') from None
    if smooth < 1:
        raise ConfigError(f"--smooth must be at least 1 (1: no smoothing), not {smooth}")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"--out must end in .png, .pdf or .svg, not {out.name}")
    refuse_existing(out, force, inputs=run_dirs)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(run_dirs):
        curves = read_metrics(run)
        color = f"C{i}"
        if curves["loss"]:
            steps, values = zip(*curves["loss"])
            k = max(1, smooth)
            avg = [sum(values[max(0, j - k + 1):j + 1]) / len(values[max(0, j - k + 1):j + 1])
                   for j in range(len(values))]
            ax.plot(steps, avg, color=color, alpha=0.6, label=f"{Path(run).name} train")
        if curves["val_loss"]:
            steps, values = zip(*curves["val_loss"])
            ax.plot(steps, values, "o-", color=color, label=f"{Path(run).name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out
