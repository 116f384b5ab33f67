"""CoCoMix against NTP, KD, pause and the ablations at small scale, on all of ../shared/corpus.

    python experiments/small_scale/run.py [STAGE ...] [--seeds 0 1 2] [--variants ...]

Stages, in order (default: all of them): ``data`` (sentencepiece BPE 8192 and token shards, the
last 1% of every file held out), ``teacher``, ``sae``, ``students`` (every variant in
``configs/`` for every seed; seed-major, so complete seeds land first), ``report``. Every stage
skips what is already done and resumes a run that was cut off from its last checkpoint, so the
script can be started again at any time. Models and shards live in ``--work`` (default
``experiments/small_scale/work``, not committed); each finished student writes
``results/VARIANT-sSEED.json`` and its ``metrics.jsonl``, which are committed.

``--variants deep_ntp deep_cocomix deep_concept_only deep_ntp_narrow`` runs the same comparison
on deeper students (``configs/deep.toml``: 8 blocks, concept inserted before block 3).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import CORPUS, make_dirs, read_toml, run_stages, run_trainer, train_students  # noqa: E402

from cocomix_mlx.config import Config, apply_overrides, from_dict, load_toml  # noqa: E402
from cocomix_mlx.data import prepare  # noqa: E402
from cocomix_mlx.evaluate import last_word_items, perplexity  # noqa: E402
from cocomix_mlx.models import config_parameters, widen  # noqa: E402
from cocomix_mlx.text import iter_chunks  # noqa: E402
from cocomix_mlx.tokenizer import train_tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
VARIANTS = ["ntp", "cocomix", "kd", "pause", "cocomix_activation", "concept_only", "mixing_only",
            "cocomix_add", "ntp_narrow"]
DEEP = "deep_"  # prefix: the variant on deeper students (configs/deep.toml applied first)
DEEP_VARIANTS = [DEEP + v for v in ("ntp", "cocomix", "concept_only", "ntp_narrow")]
WIDENED = ("ntp", "kd", "pause")  # baselines widened to CoCoMix's parameter count, as in the paper
LAMBADA_ITEMS = 500


def stage_data(work: Path) -> None:
    if (work / "data" / "meta.json").exists():
        return
    files = sorted(str(p) for p in CORPUS.glob("*.txt.gz"))
    train_tokenizer(files, 8192, work / "tok", max_sentences=400_000)
    prepare(files, str(work / "tok"), str(work / "data"), val_fraction=0.01, force=True)
    heldout = "".join(c.text for c in iter_chunks(files, 0.01) if c.val)
    (work / "heldout.txt").write_text(heldout, encoding="utf-8")


def stage_teacher(work: Path, results: Path = RESULTS) -> None:
    if (work / "teacher" / "done").exists():
        return
    cfg = load_toml(CONFIGS / "teacher.toml")
    run_trainer(cfg, work / "teacher", work / "data")
    if not (results / "teacher.json").exists():  # the figure of the teacher the results used
        result = {"val": perplexity(str(work / "teacher"), str(work / "data")),
                  "tokens": cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len}
        (results / "teacher.json").write_text(json.dumps(result, indent=1) + "\n")
    (work / "teacher" / "done").touch()


def stage_sae(work: Path, results: Path = RESULTS) -> None:
    from cocomix_mlx.checkpoint import load_model
    from cocomix_mlx.models.sae import load_sae
    from cocomix_mlx.sae_analysis import evaluate_sae
    from cocomix_mlx.sae_trainer import SAETrainConfig, SAETrainer

    spec = read_toml(CONFIGS / "sae.toml")
    teacher, _ = load_model(work / "teacher")
    if not (work / "sae" / "done").exists():
        trainer = SAETrainer(SAETrainConfig(**spec, save_every=100), teacher, work / "data",
                             work / "sae", teacher_name="small_scale/teacher")
        if (work / "sae" / "trainer_state.json").exists():
            trainer.resume()
        trainer.train()
        (work / "sae" / "done").touch()
    if not (results / "sae.json").exists():
        quality = evaluate_sae(teacher, load_sae(work / "sae"), spec["layer"], work / "data",
                               batches=50)
        (results / "sae.json").write_text(json.dumps(quality, indent=1, default=float) + "\n")


def student_config(variant: str, seed: int, work: Path) -> Config:
    sae = read_toml(CONFIGS / "sae.toml")
    cfg = from_dict(read_toml(CONFIGS / "base.toml"))
    prefix, kind = (DEEP, variant[len(DEEP):]) if variant.startswith(DEEP) else ("", variant)
    if prefix:
        cfg = from_dict(read_toml(CONFIGS / "deep.toml"), base=cfg)
    cfg = from_dict(read_toml(CONFIGS / f"{kind}.toml"), base=cfg)
    apply_overrides(cfg, {"seed": seed, "concept.concept_dim": sae["latents"],
                          "objective.sae_layer": sae["layer"], "teacher": str(work / "teacher"),
                          "sae": str(work / "sae")})
    if kind in WIDENED:  # the width (a multiple of n_head) whose count is nearest CoCoMix's
        widen(cfg, config_parameters(student_config(prefix + "cocomix", seed, work)))
    return cfg


def stage_students(work: Path, results: Path, seeds: list[int], variants: list[str]) -> None:
    if not (work / "heldout.txt").exists():
        raise SystemExit(f"no held-out text in {work}; run the data stage first")
    heldout = (work / "heldout.txt").read_text(encoding="utf-8")
    items = last_word_items(heldout, LAMBADA_ITEMS)
    train_students(results, seeds, variants, lambda v, s: student_config(v, s, work),
                   work / "runs", work / "data", items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", default=["data", "teacher", "sae", "students", "report"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS + DEEP_VARIANTS,
                        help="default: every variant but the deep_* ones")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where finished runs go (runs from other shards need their own)")
    args = parser.parse_args()
    make_dirs(args.work, args.results)
    run_stages(args.stages, {
        "data": lambda: stage_data(args.work),
        "teacher": lambda: stage_teacher(args.work, args.results),
        "sae": lambda: stage_sae(args.work, args.results),
        "students": lambda: stage_students(args.work, args.results, args.seeds, args.variants),
        "report": report}, parser.error)


def report() -> None:
    from report import report as write_report

    write_report()

if __name__ == "__main__":
    main()
