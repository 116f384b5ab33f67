"""What the experiment runners share: configs, resumable training, widening, results on disk."""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import json
import platform
import re
import shutil
import statistics
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Callable

import mlx.core as mx

from cocomix_mlx.config import Config
from cocomix_mlx.files import write_json
from cocomix_mlx.models import num_parameters

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {platform.processor() or 'cpu'}, "
            f"mlx {mx.__version__} {mx.default_device()}")


def read_toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def make_dirs(*paths: Path) -> None:
    """Create the runner's work and results directories, or stop with one line."""
    for path in paths:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"cannot use {path} as a directory ({e.strerror}); give another "
                             "--work or --results") from None


def run_trainer(cfg: Config, out: Path, data: Path) -> float:
    """Train (or finish) the run in ``out``; returns its training wall time in seconds."""
    from cocomix_mlx.runs import make_run

    trainer = make_run(cfg, data, out, resume="auto")
    if trainer.state.step < cfg.train.steps:
        trainer.train()
    return trainer.state.elapsed


def train_student(results: Path, variant: str, seed: int, cfg: Config, out: Path, data: Path,
                  items: list) -> None:
    """Train (or finish) one student, evaluate it (perplexity on the whole held-out split,
    last-word accuracy on ``items``) and write ``results/VARIANT-sSEED.json`` and its curve."""
    import time

    import cocomix_mlx as cm
    from cocomix_mlx.evaluate import last_word, perplexity

    started = time.time()
    elapsed = run_trainer(cfg, out, data)
    model, tokenizer = cm.load(out)
    result = {
        "variant": variant, "seed": seed, "n_embd": cfg.model.n_embd,
        "params": num_parameters(model),
        "tokens": cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len,
        "train_s": round(elapsed, 1), "val": perplexity(str(out), str(data)),
        "lambada": last_word(model, tokenizer, items), "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": round(time.time() - started, 1),
    }
    write_result(results, f"{variant}-s{seed}", result, out)


def train_students(results: Path, seeds: list[int], variants: list[str],
                   config_of: Callable[[str, int], Config], runs: Path, data: Path,
                   items: list) -> None:
    """Every variant for every seed, seed-major (complete seeds land first); finished students
    (``results/VARIANT-sSEED.json``) are skipped."""
    check_data(results, data)
    for seed in seeds:
        for variant in variants:
            name = f"{variant}-s{seed}"
            if not (results / f"{name}.json").exists():
                train_student(results, variant, seed, config_of(variant, seed), runs / name, data,
                              items)


def check_data(results: Path, data: Path, record: dict | None = None) -> None:
    """Refuse to add runs to ``results`` when the runs there were trained on other token shards.

    ``results/data.json`` names the shards (content hash and tokenizer; a null field is not
    checked); it is written with the first run, from ``record`` when given. A work directory
    rebuilt since (another tokenizer, other files) must give the same shards, or its runs would
    sit beside the old ones unpaired.
    """
    from cocomix_mlx.label_store import data_identity

    if not (data / "meta.json").exists():
        raise SystemExit(f"no token shards in {data}; run the data stage first")
    meta = json.loads((data / "meta.json").read_text())
    have = {"identity": data_identity(data, meta), "tokenizer_id": meta.get("tokenizer_id")}
    path = results / "data.json"
    if not path.exists():
        write_json(path, {k: (record or have).get(k) for k in have})
    want = json.loads(path.read_text())
    if any(want.get(k) is not None and want[k] != v for k, v in have.items()):
        raise SystemExit(f"the runs in {results} were trained on other token shards than {data} "
                         f"({path.name}: {want}); use a new results directory, or rebuild the "
                         "work directory that made them")


def write_result(results: Path, name: str, result: dict, run_dir: Path) -> None:
    """``results/NAME.json`` (atomically) and the run's log as ``results/curves/NAME.jsonl``."""
    (results / "curves").mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "metrics.jsonl", results / "curves" / f"{name}.jsonl")
    write_json(results / f"{name}.json", result)


def run_stages(stages: list[str], table: dict[str, Callable[[], None]], error) -> None:
    for stage in stages:
        if stage not in table:
            error(f"unknown stage {stage}; available: {', '.join(table)}")
        table[stage]()


# ---- reports ------------------------------------------------------------------------------------
RUN_FILE = re.compile(r".+-s\d+\.json")  # VARIANT-sSEED.json; not e.g. labels-smol.json


def load_runs(results: Path) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: result}}`` of the finished runs in ``results``."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(p for p in results.glob("*.json") if RUN_FILE.fullmatch(p.name)):
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
