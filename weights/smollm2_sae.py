"""Ship a trained SmolLM2-135M SAE into weights/smollm2-sae/ (fp16), with its concept dictionary,
its measured quality and a plain vs steered sample.

    python weights/smollm2_sae.py --sae runs/smol-sae --teacher runs/smol --data runs/smoldata
    python weights/smollm2_sae.py --teacher runs/smol --sample-only --steer ice/wine=8 \
        --prompt "My favourite thing about the weekend is"     # redo only the sample

The SAE is measured in float32 and again in float16 on the validation split (FVU of the
standardized input, dead latents, the teacher's loss increase when the reconstruction replaces
block 14's output); it is shipped only if the fp16 copy meets the bar (standardized FVU ≤ 0.15,
dead ≤ 5%, Δ loss ≤ 0.3 nats), unless ``--force``. Everything measured goes into
``weights/smollm2-sae/manifest.json``.
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx

import cocomix_mlx as cm
from cocomix_mlx.errors import CocomixError, ConfigError
from cocomix_mlx.files import atomic_directory, read_json, write_json
from cocomix_mlx.generate import generate, parse_steer, resolve_concepts, sae_latents
from cocomix_mlx.models.sae import save_sae
from cocomix_mlx.sae_analysis import describe, evaluate_sae, names_of, read_dictionary

HERE = Path(__file__).resolve().parent
BAR = {"fvu_normalized": 0.15, "dead_fraction": 0.05, "delta_loss": 0.3}
PROMPT = "The weather today is"


def measure(teacher, sae, data: Path, batches: int) -> dict:
    return evaluate_sae(teacher, sae, sae.cfg.layer, data, batches=batches)


def steering_sample(teacher, tokenizer, sae, latents: list[dict], prompt: str = PROMPT,
                    steer: dict | None = None) -> dict:
    """The plain continuation of ``prompt`` and the one steered by ``steer`` (``{LABEL or
    index: ALPHA}``, one entry; by default the most frequent word-labelled latent active on the
    prompt, scaled by 10), greedy, 40 tokens."""
    if steer is None:
        active = {c["index"] for row in sae_latents(teacher, tokenizer, sae, prompt, top=32)
                  for c in row["concepts"]}
        words = [x for x in latents
                 if x["index"] in active and x["label"].replace("/", "").isalpha()]
        pick = max(words or [x for x in latents if x["index"] in active],
                   key=lambda x: x["frequency"])
        steer = {pick["index"]: 10.0}
    index, alpha = (a.item() for a in resolve_concepts(steer, sae.cfg.latents,
                                                       names_of(latents)))
    label = next(x["label"] for x in latents if x["index"] == index)
    run = dict(max_tokens=40, temp=0.0, sae=sae, layer=sae.cfg.layer)
    return {"prompt": prompt, "latent": index, "label": label, "alpha": alpha,
            "plain": generate(teacher, tokenizer, prompt, **run),
            "steered": generate(teacher, tokenizer, prompt, steer={index: alpha}, **run)}


def redo_sample(teacher_dir: Path, out: Path, prompt: str, steer: dict | None) -> None:
    """Rewrite only the sample in ``out/manifest.json``, from the SAE shipped there."""
    teacher, tokenizer = cm.load(teacher_dir)
    sae = cm.load_sae(out)
    report = read_json(out / "manifest.json")
    report["sample"] = steering_sample(teacher, tokenizer, sae,
                                       read_dictionary(out / "concepts.json"), prompt, steer)
    write_json(out / "manifest.json", report)
    print(json.dumps(report["sample"], indent=2))


def ship(args, steer: dict | None) -> None:
    teacher, tokenizer = cm.load(args.teacher)
    sae = cm.load_sae(args.sae)
    report = {"source": str(args.sae), "float32": measure(teacher, sae, args.data, args.batches)}
    state = read_json(args.sae / "trainer_state.json")
    report["training"] = {"step": state.get("step"), **state.get("config", {})}
    sae.set_dtype(mx.float16)

    def write(tmp: Path) -> None:
        save_sae(sae, tmp)
        half = cm.load_sae(tmp)
        half.set_dtype(mx.float32)  # stored in fp16, computed in fp32
        report["float16"] = measure(teacher, half, args.data, args.batches)
        failed = {k: report["float16"][k] for k, limit in BAR.items()
                  if report["float16"][k] > limit}
        if failed and not args.force:
            raise ConfigError(f"the fp16 SAE misses the bar {BAR}: {failed}; train longer "
                              "(or --force)")
        dictionary = describe(teacher, tokenizer, half, half.cfg.layer, args.data,
                              batches=args.batches)
        report["sample"] = steering_sample(teacher, tokenizer, half, dictionary["latents"],
                                           args.prompt, steer)
        (tmp / "concepts.json").write_text(json.dumps(dictionary, ensure_ascii=False) + "\n")
        write_json(tmp / "manifest.json", report)

    atomic_directory(args.out, write)  # the shipped directory is replaced only when all is done
    print(json.dumps(report, indent=2, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sae", type=Path)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--out", type=Path, default=HERE / "smollm2-sae")
    parser.add_argument("--force", action="store_true", help="ship even below the bar")
    parser.add_argument("--prompt", default=PROMPT, help="the sample's prompt")
    parser.add_argument("--steer", help="the sample's LABEL=ALPHA (default: picked)")
    parser.add_argument("--sample-only", action="store_true",
                        help="only redo the sample of the SAE already in --out")
    args = parser.parse_args()
    if not args.sample_only and (args.sae is None or args.data is None):
        parser.error("--sae and --data are needed to ship")
    try:
        steer = parse_steer([args.steer]) if args.steer is not None else None
        if steer is not None and len(steer) != 1:
            raise ConfigError("--steer takes one LABEL=ALPHA")
        if args.sample_only:
            redo_sample(args.teacher, args.out, args.prompt, steer)
        else:
            ship(args, steer)
    except CocomixError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
