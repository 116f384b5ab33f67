"""Where a concept slot sits under RoPE: "shared" (its token's position) against "consecutive"
(the interleaved slots numbered 0, 1, 2, ...), paired on every seed.

    python experiments/positions/run.py [STAGE ...] [--seeds 0 1 2 3] [--work DIR]

Stages (default: all): ``data`` (Austen and Moby-Dick from ``../shared/corpus`` in the shipped
4096-piece tokenizer, the last 5% of each held out), ``labels`` (the shipped teacher and SAE's
attribution labels over the training split, as a label store), ``students`` (the
``cocomix-llama-tiny`` shape for every position rule and seed, seed-major), ``report``
(``RESULTS.md``). Each stage skips what is done and resumes what was cut off, so the script can be
started again at any time. Work goes to ``--work`` (default ``experiments/positions/work``, not
committed); finished students write ``results/VARIANT-sSEED.json`` and their curves.

The two variants of a seed share their initial weights (initialisation is keyed by parameter
name, and the two models have the same parameters), their batches (``batch_order = windows``)
and their labels; only the rotary positions of the slots after the insertion point differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

import cocomix_mlx as cm  # noqa: E402
from cocomix_mlx.config import apply_overrides, preset  # noqa: E402
from cocomix_mlx.labels import BuildConfig  # noqa: E402
from common import check_data, make_dirs, run_stages, train_students  # noqa: E402

RESULTS = HERE / "results"
VARIANTS = ["shared", "consecutive"]
CORPUS = ("austen.txt.gz", "mobydick.txt.gz")
STEPS, BATCH, SEQ = 256, 16, 128  # 256 x 16 x 128 = 524,288 training tokens per student
RECIPE = {"train.seq_len": SEQ, "train.batch_size": BATCH, "train.steps": STEPS,
          "train.lr": 1e-3, "train.warmup_steps": 50, "train.batch_order": "windows",
          "train.eval_every": 64, "train.eval_batches": 20, "train.save_every": 64,
          "train.log_every": 16, "model.n_positions": SEQ}


def stage_data(work: Path, corpus: Path) -> None:
    if (work / "data" / "meta.json").exists():
        return
    from cocomix_mlx.data import prepare

    prepare([str(corpus / name) for name in CORPUS], str(ROOT / "weights" / "teacher"),
            str(work / "data"), val_fraction=0.05, force=True)


def stage_labels(work: Path) -> None:
    out = work / "labels"
    if out.exists():
        return
    partial = out.with_name(f".{out.name}.partial")
    cm.labels.build(ROOT / "weights" / "teacher", ROOT / "weights" / "sae", work / "data", out,
                    BuildConfig(window=SEQ, stride=SEQ, batch_size=32, k_attr=4),
                    resume=(partial / "progress.json").exists(),
                    force=partial.exists() and not (partial / "progress.json").exists())


def student_config(variant: str, seed: int, work: Path):
    store = cm.labels.open(work / "labels")
    cfg = preset("cocomix-llama-tiny")
    apply_overrides(cfg, {**RECIPE, "train.seed": seed, "concept.positions": variant,
                          "objective.label_store": str(store.path),
                          "concept.concept_dim": store.latents, "objective.k_attr": store.k_attr,
                          "model.vocab_size": json.loads((work / "data" / "meta.json")
                                                         .read_text())["vocab_size"]})
    return cfg


def stage_students(work: Path, results: Path, seeds: list[int]) -> None:
    from cocomix_mlx.evaluate import last_word_items

    check_data(results, work / "data")
    items = last_word_items((work / "heldout.txt").read_text(encoding="utf-8"), 200)
    train_students(results, seeds, VARIANTS, lambda v, s: student_config(v, s, work),
                   work / "runs", work / "data", items)


def heldout(work: Path, corpus: Path) -> None:
    """The held-out tail of each file (the validation split's text), for last-word items."""
    import gzip

    path = work / "heldout.txt"
    if path.exists():
        return
    parts = []
    for name in CORPUS:
        text = gzip.decompress((corpus / name).read_bytes()).decode("utf-8")
        parts.append(text[int(len(text) * 0.95):])
    path.write_text("\n\n".join(parts), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", default=["data", "labels", "students", "report"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    make_dirs(args.work, args.results)

    def report() -> None:
        from report import write_report

        write_report(args.results)

    run_stages(args.stages, {
        "data": lambda: (stage_data(args.work, args.corpus), heldout(args.work, args.corpus)),
        "labels": lambda: stage_labels(args.work),
        "students": lambda: stage_students(args.work, args.results, args.seeds),
        "report": report}, parser.error)


if __name__ == "__main__":
    main()
