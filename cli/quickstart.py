"""``cocomix quickstart``: the offline default run."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import byte_progress, console, fail

PROMPT = "The return value of the function"


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Working directory."),
    steps: int = typer.Option(300, "--steps", help="Training steps (about 1 s each on 2 cores)."),
    vocab_size: int = typer.Option(4096, "--vocab-size"),
    max_tokens: int = typer.Option(60, "--max-tokens", help="Length of the sample."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing --out."),
):
    """Train a tiny GPT-2 on English text that ships with Python, offline, and print a sample."""
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    from cocomix_mlx import config as cfgmod
    from cocomix_mlx.checkpoint import load
    from cocomix_mlx.data import prepare
    from cocomix_mlx.embedded import write_python_docs
    from cocomix_mlx.models import build_model
    from cocomix_mlx.objectives import get_objective
    from cocomix_mlx.tokenizer import train_tokenizer
    from cocomix_mlx.trainer import Trainer

    from .train_cmds import run_training

    if out.exists() and any(out.iterdir()) and not force:
        fail(f"{out} already exists; pass --force to start over or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    text = write_python_docs(out / "python_docs.txt")
    console.print(f"corpus: {text.stat().st_size / 1e6:.1f} MB of Python's own documentation")
    with byte_progress("tokenizer") as progress:
        train_tokenizer([str(text)], vocab_size, str(out / "tokenizer"), progress=progress)
    with byte_progress("tokenizing") as progress:
        meta = prepare([str(text)], str(out / "tokenizer"), str(out / "data"), progress=progress,
                       force=True)
    console.print(f"data: {meta['train_tokens']:,} training tokens, vocab {meta['vocab_size']}")

    cfg = cfgmod.preset("tiny")
    cfgmod.apply_overrides(cfg, {
        "vocab_size": meta["vocab_size"], "n_layer": 4, "n_positions": 128, "seq_len": 128,
        "batch_size": 16, "steps": steps, "lr": 2e-3, "eval_every": max(steps // 3, 1),
        "save_every": steps, "eval_batches": 10})
    model = build_model(cfg.model, seed=cfg.train.seed)
    trainer = Trainer(cfg, model, get_objective("ntp"), out / "data", out / "model")
    run_training(trainer)

    model, tokenizer = load(out / "model")
    sampler = make_sampler(temp=0.8, top_p=0.95)
    mx.random.seed(0)
    sample = mlx_lm.generate(model, tokenizer, PROMPT, max_tokens=max_tokens, sampler=sampler)
    console.rule("sample")
    console.print(f"[bold]{PROMPT}[/]{sample}", highlight=False)
    console.rule()
    console.print(f"model in {out / 'model'} (an mlx-lm checkpoint: `mlx_lm.generate --model "
                  f"{out / 'model'}` works too)")
