"""``cocomix pretrain``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cocomix_mlx.config import PRESETS

from .common import console, fail, step_progress, warn_if_slow_blas

MODES = "ntp, cocomix, kd, pause"


def pretrain(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Token shards from `cocomix data prepare`."),
    out: Path = typer.Option(..., "--out", help="Run/checkpoint directory."),
    mode: Optional[str] = typer.Option(None, "--mode", help=f"Objective: {MODES} (default ntp)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=f"Named config: {', '.join(PRESETS)}."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML config file."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Frozen teacher (cocomix, kd)."),
    sae: Optional[Path] = typer.Option(None, "--sae", help="SAE on the teacher's layer (cocomix)."),
    sae_layer: Optional[int] = typer.Option(None, "--sae-layer", help="Teacher block the SAE reads."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Label store from `cocomix labels build` (cocomix): no teacher "
                               "in the step. The label kind is --objective.labels."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Pretrain a model. Any config key can be overridden: --lr 3e-4 --model.n_layer 4 ..."""
    warn_if_slow_blas()
    from cocomix_mlx import config as cfgmod
    from cocomix_mlx.data import load_meta
    from cocomix_mlx.models import num_parameters
    from cocomix_mlx.runs import follow_sources, make_run, resumed_config

    if labels is not None and mode not in (None, "cocomix"):
        fail("--labels is for --mode cocomix")
    if resume:
        cfg = resumed_config(out)
    elif preset and config:
        fail("give either --preset or --config, not both")
    elif config:
        cfg = cfgmod.load_toml(config)
    else:
        default = "cocomix-tiny" if mode in ("cocomix", "pause") or labels else "tiny"
        cfg = cfgmod.preset(preset or default)
    explicit = cfgmod.apply_overrides(cfg, list(ctx.args))
    if config is not None:
        explicit.add("model.vocab_size")
    if labels is not None and not resume:
        mode, cfg.objective.label_store = "cocomix", str(labels)
    if mode:
        cfg.train.mode = mode
    for key, value in (("teacher", teacher), ("sae", sae), ("sae_layer", sae_layer)):
        if value is not None:
            setattr(cfg.objective, key, str(value) if isinstance(value, Path) else value)
            explicit.add(f"objective.{key}")
    if not resume:
        follow_sources(cfg, load_meta(data), explicit)
    trainer = make_run(cfg, data, out, resume=resume, force=force)
    if trainer.rank == 0:
        n_params = num_parameters(trainer.model)
        m = cfg.model
        heads = f"H={m.n_head}" + (f"/{m.n_kv_head}" if m.n_kv_head not in (0, m.n_head) else "")
        console.print(f"[bold]{cfg.train.mode}[/] {m.model_type} model: {n_params / 1e6:.2f}M "
                      f"parameters, d={m.n_embd} L={m.n_layer} {heads} "
                      f"V={cfg.model.vocab_size}; {cfg.train.steps} steps of "
                      f"{cfg.train.batch_size * cfg.train.grad_accum}x{cfg.train.seq_len} tokens")
    run_training(trainer)


def config_keys_help() -> str:
    """The epilog of ``pretrain --help``: every config key, its default and its meaning."""
    from cocomix_mlx.config import describe_keys

    lines = ["Config keys (--KEY VALUE; a bare key works when unambiguous; a TOML --config has "
             "[model], [train], [concept] and [objective] tables):"]
    lines += [f"--{key} [{default}]  {meaning}" for key, default, meaning in describe_keys()]
    return "\n".join(lines)


def run_training(trainer) -> dict:
    """Run ``trainer`` with a progress bar and validation lines (rank 0 prints)."""
    bar, task = step_progress(trainer.cfg.train.steps, trainer.state.step)

    def on_event(event: str, info: dict) -> None:
        if trainer.rank != 0:
            return
        if event == "step":
            bar.update(task, completed=info["step"], loss=f"{info['loss']:.3f}",
                       speed=f"{info['tokens_per_s']:.0f}")
        elif event == "eval":
            ntp = info.get("val_ntp_loss", info["val_loss"])
            extra = f", next-token {ntp:.4f}" if abs(ntp - info["val_loss"]) > 1e-9 else ""
            bar.console.print(f"step {info['step']}: val loss {info['val_loss']:.4f}{extra} "
                              f"(ppl {info['val_ppl']:.2f})")

    with bar:
        last = trainer.train(on_event)
    if trainer.rank == 0 and last:
        console.print(f"done: step {last['step']}, loss {last['loss']:.4f}"
                      + (f", val loss {last['val_loss']:.4f}" if "val_loss" in last else "")
                      + f"; checkpoint in {trainer.out_dir}")
    return last
