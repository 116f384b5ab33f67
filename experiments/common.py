"""What the experiment runners share: configs, resumable training, widening, results on disk."""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import json
import platform
import shutil
import statistics
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Callable

import mlx.core as mx

from cocomix_mlx.config import Config
from cocomix_mlx.data import load_meta
from cocomix_mlx.models import build_model, num_parameters
from cocomix_mlx.objectives import build_objective

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {platform.processor() or 'cpu'}, "
            f"mlx {mx.__version__} {mx.default_device()}")


def read_toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def run_trainer(cfg: Config, out: Path, data: Path) -> float:
    """Train (or finish) the run in ``out``; returns its training wall time in seconds."""
    from cocomix_mlx.checkpoint import recover
    from cocomix_mlx.trainer import Trainer

    model = build_model(cfg.model, seed=cfg.train.seed, mode=cfg.train.mode, concept=cfg.concept)
    trainer = Trainer(cfg, model, build_objective(cfg, load_meta(data)), data, out)
    recover(out)
    if (out / "trainer_state.json").exists():
        trainer.resume()
    elif out.exists():
        shutil.rmtree(out)
    if trainer.state.step < cfg.train.steps:
        trainer.train()
    return trainer.state.elapsed


def n_params(cfg: Config) -> int:
    return num_parameters(build_model(cfg.model, mode=cfg.train.mode, concept=cfg.concept))


def widen(cfg: Config, target: int) -> Config:
    """Set ``cfg``'s width (a multiple of n_head) to the one whose parameter count is nearest
    ``target``, as the paper widens its NTP baselines to CoCoMix's count."""
    gaps = {}
    while True:
        count = n_params(cfg)
        gaps[cfg.model.n_embd] = abs(count - target)
        if count >= target:
            break
        cfg.model.n_embd += cfg.model.n_head
    cfg.model.n_embd = min(gaps, key=gaps.get)
    return cfg


def write_result(results: Path, name: str, result: dict, run_dir: Path) -> None:
    """``results/NAME.json`` (atomically) and the run's log as ``results/curves/NAME.jsonl``."""
    (results / "curves").mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "metrics.jsonl", results / "curves" / f"{name}.jsonl")
    tmp = results / f".{name}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(results / f"{name}.json")


def run_stages(stages: list[str], table: dict[str, Callable[[], None]], error) -> None:
    for stage in stages:
        if stage not in table:
            error(f"unknown stage {stage}; available: {', '.join(table)}")
        table[stage]()


# ---- reports ------------------------------------------------------------------------------------
def load_runs(results: Path) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: result}}`` of the finished runs in ``results``."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(results.glob("*-s*.json")):
        r = json.loads(path.read_text())
        runs[r["variant"]][r["seed"]] = r
    return runs


def mean_std(values: list[float], digits: int = 2, sign: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f}"
    return f"{statistics.mean(values):{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired(runs: dict[str, dict[int, dict]], variant: str, reference: str) -> dict[int, float]:
    """Per seed present in both: variant's validation perplexity minus the reference's."""
    a, b = runs.get(variant, {}), runs.get(reference, {})
    return {s: a[s]["val"]["ppl"] - b[s]["val"]["ppl"] for s in sorted(a.keys() & b.keys())}


def curve(path: Path, keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` of a run's ``metrics.jsonl`` rows that carry ``key``."""
    out: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for key in keys:
            if key in row:
                out[key].append((row["step"], row[key]))
    return out


def write_generated(doc: Path, body: str, begin: str = "<!-- generated:begin -->",
                    end: str = "<!-- generated:end -->") -> None:
    """Replace the part of ``doc`` between the markers with ``body``; the rest is kept."""
    text = doc.read_text() if doc.exists() else f"# Results\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    doc.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
