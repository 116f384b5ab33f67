"""``cocomix quickstart``: the offline default run on the shipped models in ``weights/``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .common import byte_progress, console, fail, warn_if_slow_blas

PROMPT = "The return value of the function"
SAMPLING = dict(temp=0.8, top_p=0.95, repetition_penalty=1.3, seed=0)


def verdict(shipped: Path) -> Optional[str]:
    """What the comparison means, for models that weights/build.py built (their
    ``manifest.json``), with the 8-block study of experiments/strong_teacher/; None for other
    models."""
    import json

    try:
        m = json.loads((shipped / "manifest.json").read_text())
        r = m["recipe"]
        blocks, tokens = r["shape"]["n_layer"], r["student"]["steps"] * r["batch_size"] * r["seq_len"]
        built = (m["cocomix"]["val"]["ppl"], m["ntp"]["val"]["ppl"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    standing = "trails" if built[0] > built[1] else "does not trail"
    return (f"The shipped students are tiny ({blocks} blocks, {tokens / 1e6:.1f}M training "
            f"tokens), and at that size CoCoMix {standing} its NTP twin ({built[0]:.0f} vs "
            f"{built[1]:.0f} validation perplexity when they were built). In the 8-block study "
            "(experiments/strong_teacher/RESULTS.md), after 2.1M tokens CoCoMix does not beat "
            "NTP of its own width beyond seed noise, but gains on it as tokens grow (level at "
            "about 5M tokens on the measured trend, 3M-26M within one standard error); its lead "
            "over NTP widened to its parameter count (the paper's baseline) depends on the seed.")


def weights_dir(given: Optional[Path]) -> Path:
    import cocomix_mlx

    path = given or Path(os.environ.get("COCOMIX_WEIGHTS") or
                         Path(cocomix_mlx.__file__).resolve().parents[1] / "weights")
    if not (path / "cocomix" / "config.json").exists():
        fail(f"no shipped weights in {path}; run from a checkout (pip install -e .) or pass "
             "--weights DIR (rebuild them with python weights/build.py)")
    return path


def pick_concept(dictionary: Path) -> tuple[int, str]:
    """The most frequent concept labelled by one whole word, for the steering demo."""
    from cocomix_mlx.sae_analysis import read_dictionary

    latents = read_dictionary(dictionary)
    words = [x for x in latents if x["label"].isalpha() and len(x["label"]) >= 3
             and x["label"] not in ("dead", "misc")]
    best = max(words or latents, key=lambda x: x["frequency"])
    return best["index"], best["label"]


def steering_demo(model, tokenizer, dictionary: Path, alpha: float, max_tokens: int):
    """``(index, label, plain, steered)``: two samples with the same seed, the second with the
    demo concept's predicted logit scaled by ``alpha`` over the generated text."""
    import cocomix_mlx as cm

    index, label = pick_concept(dictionary)
    plain = cm.generate(model, tokenizer, PROMPT, max_tokens=max_tokens, **SAMPLING)
    steered = cm.generate(model, tokenizer, PROMPT, max_tokens=max_tokens, steer={index: alpha},
                          span="generated", **SAMPLING)
    return index, label, plain, steered


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Working directory."),
    steps: int = typer.Option(60, "--steps", help="Continued-pretraining steps per model."),
    max_tokens: int = typer.Option(40, "--max-tokens", help="Length of each sample."),
    alpha: float = typer.Option(8.0, "--alpha", help="Steering factor for the demo concept."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Shipped weights directory."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing --out."),
):
    """Continue CoCoMix pretraining of the shipped student on Python's own documentation, with
    the shipped teacher and SAE; compare with its NTP twin; print a plain and a steered sample."""
    warn_if_slow_blas()
    import mlx.core as mx
    from rich.table import Table

    import cocomix_mlx as cm
    from cocomix_mlx import config as cfgmod
    from cocomix_mlx.checkpoint import load_model
    from cocomix_mlx.data import prepare
    from cocomix_mlx.embedded import write_python_docs
    from cocomix_mlx.evaluate import perplexity
    from cocomix_mlx.files import refuse_existing
    from cocomix_mlx.models import config_from_hf
    from cocomix_mlx.runs import make_run

    from .train_cmds import run_training

    if steps < 1 or max_tokens < 1:
        fail(f"--steps and --max-tokens must be positive, not {steps} and {max_tokens}")
    if not -10 <= alpha <= 10:
        fail(f"--alpha must lie in [-10, 10], not {alpha}")
    shipped = weights_dir(weights)
    refuse_existing(out, force, empty_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    text = write_python_docs(out / "python_docs.txt")
    with byte_progress("tokenizing") as progress:
        meta = prepare([str(text)], str(shipped / "cocomix"), str(out / "data"), val_fraction=0.05,
                       progress=progress, force=True)
    console.print(f"data: {meta['train_tokens']:,} tokens of Python's own documentation "
                  f"(shipped tokenizer, vocab {meta['vocab_size']})")
    sae_layer = cm.load_sae(shipped / "sae").cfg.layer
    results = {}
    for name, mode in (("cocomix", "cocomix"), ("ntp", "ntp")):
        model, config = load_model(shipped / name)
        model.set_dtype(mx.float32)
        cfg = config_from_hf(config)
        overrides = {"seq_len": config["n_positions"], "batch_size": 16, "steps": steps,
                     "lr": 5e-4, "warmup_steps": max(1, steps // 10), "eval_every": steps,
                     "save_every": steps, "eval_batches": 10}
        if mode == "cocomix":
            overrides.update({"teacher": str(shipped / "teacher"), "sae": str(shipped / "sae"),
                              "sae_layer": sae_layer})
        cfgmod.apply_overrides(cfg, overrides)
        console.rule(f"{name}: {steps} steps of continued pretraining")
        trainer = make_run(cfg, out / "data", out / name, force=True, model=model)
        run_training(trainer)
        results[name] = perplexity(str(out / name), str(out / "data"), seq_len=cfg.train.seq_len,
                                   max_batches=20)

    table = Table(title="validation on held-out Python documentation")
    table.add_column("model")
    table.add_column("loss", justify="right")
    table.add_column("perplexity", justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['loss']:.4f}", f"{r['ppl']:.2f}")
    console.print(table)
    meaning = verdict(shipped)
    if meaning:
        console.print(meaning, highlight=False)

    model, tokenizer = cm.load(out / "cocomix")
    index, label, plain, steered = steering_demo(model, tokenizer, shipped / "concepts.json",
                                                 alpha, max_tokens)
    samples = Table(title=f"samples (same seed); steered: concept {index} “{label}” × {alpha:g}",
                    show_lines=True)
    samples.add_column("plain")
    samples.add_column("steered")
    samples.add_row(PROMPT + plain, PROMPT + steered)
    console.print(samples, highlight=False)
    console.print(f"models in {out}; try `cocomix generate --model {out / 'cocomix'} --prompt "
                  f"\"...\" --concepts {shipped / 'concepts.json'} --steer LABEL=6`, or read and "
                  f"steer its concepts in the browser: `cocomix serve --model {out / 'cocomix'} "
                  f"--concepts {shipped / 'concepts.json'}` (the serve extra)")
