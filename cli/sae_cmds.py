"""``cocomix sae train|eval|describe``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cocomix_mlx.data import check_tokenizer

from .common import console, fail, print_result, step_progress, warn_if_slow_blas

sae_app = typer.Typer(no_args_is_help=True, help="Train, evaluate and describe TopK SAEs.")


@sae_app.command("train")
def sae_train(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher checkpoint directory."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Block whose output the SAE reads."),
    data: Path = typer.Option(..., "--data", help="Token shards (the teacher's tokenizer)."),
    out: Path = typer.Option(..., "--out", help="SAE checkpoint directory."),
    latents: int = typer.Option(4096, "--latents", help="Number of latents C (e.g. 16·d)."),
    k: int = typer.Option(32, "--k", help="Active latents per token."),
    tokens: Optional[int] = typer.Option(
        None, "--tokens", help="Training activations (default 2000000); with --resume, "
                               "extends the run to this many."),
    batch_tokens: int = typer.Option(1024, "--batch-tokens"),
    lr: float = typer.Option(0.0, "--lr", help="0: 2e-4 / sqrt(C / 2^14)."),
    lr_decay: float = typer.Option(0.0, "--lr-decay", help="Final fraction of the steps over "
                                   "which the learning rate falls linearly to 0."),
    buffer_steps: int = typer.Option(32, "--buffer-steps", help="Batches per shuffle buffer."),
    reuse: int = typer.Option(1, "--reuse", help="Passes over each shuffle buffer: fewer "
                              "teacher forwards per step when the teacher is the slow part."),
    seed: int = typer.Option(0, "--seed"),
    save_every: int = typer.Option(500, "--save-every"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Train a TopK SAE on a teacher's residual stream (Gao et al. 2024 recipe)."""
    warn_if_slow_blas()
    from cocomix_mlx.checkpoint import load_model
    from cocomix_mlx.files import refuse_inputs
    from cocomix_mlx.rundir import RunDirectory
    from cocomix_mlx.sae_trainer import SAETrainConfig, SAETrainer, sae_config_from_checkpoint

    refuse_inputs(out, (teacher, data))
    RunDirectory.check(out, resume, force)
    if resume:
        cfg = sae_config_from_checkpoint(out)
        if tokens is not None:  # extend (or shorten) the run; the dead-latent window stays
            cfg.dead_tokens, cfg.tokens = cfg.dead_window(), tokens
    else:
        if layer is None:
            fail("give --layer: the teacher block whose output the SAE reads")
        cfg = SAETrainConfig(layer=layer, latents=latents, k=k, tokens=SAETrainConfig.tokens if tokens is None else tokens,
                             batch_tokens=batch_tokens, lr=lr, decay_fraction=lr_decay,
                             buffer_steps=buffer_steps, reuse=reuse, seed=seed,
                             save_every=save_every)
    check_tokenizer(teacher, data)
    model, _ = load_model(teacher)
    model.eval()
    trainer = SAETrainer(cfg, model, data, out, teacher_name=str(teacher))
    if resume:
        trainer.resume()
        if trainer.step > cfg.steps:
            fail(f"{out} is already at step {trainer.step}; --tokens {cfg.tokens} ends the run at "
                 f"step {cfg.steps}: give more tokens")
    else:
        trainer.run_dir.clear()
    console.print(f"SAE d={trainer.sae.cfg.d} C={cfg.latents} k={cfg.k} on layer {cfg.layer}; "
                  f"{cfg.steps} steps of {cfg.batch_tokens} activations")
    bar, task = step_progress(cfg.steps, trainer.step, fields=("fvu", "l0", "dead"))

    def on_event(event: str, info: dict) -> None:
        if event == "step":
            bar.update(task, completed=info["step"], fvu=f"{info['fvu']:.3f}",
                       l0=f"{info['l0']:.1f}", dead=f"{info['dead']:.1%}")

    with bar:
        last = trainer.train(on_event)
    if last:
        console.print(f"done: FVU {last['fvu']:.4f}, L0 {last['l0']:.1f}, dead {last['dead']:.1%}; "
                      f"SAE in {out}")


def _load(sae: Path, teacher: Path, layer: Optional[int]):
    import cocomix_mlx as cm

    model, tokenizer = cm.load(teacher)
    net = cm.load_sae(sae)
    layer = net.cfg.layer if layer is None else layer
    if layer is None:
        fail("give --layer: the SAE does not record its layer")
    return model, tokenizer, net, layer


@sae_app.command("eval")
def sae_eval(
    sae: Path = typer.Option(..., "--sae"), teacher: Path = typer.Option(..., "--teacher"),
    data: Path = typer.Option(..., "--data"), layer: Optional[int] = typer.Option(None, "--layer"),
    batches: int = typer.Option(50, "--batches", help="Validation windows of 8×128 tokens."),
    as_json: bool = typer.Option(False, "--json"),
):
    """FVU, L0, dead latents and the teacher's loss increase with the SAE spliced in."""
    from cocomix_mlx.sae_analysis import evaluate_sae

    check_tokenizer(teacher, data)
    model, _, net, layer = _load(sae, teacher, layer)
    r = evaluate_sae(model, net, layer, data, batches=batches)
    print_result(r, as_json, f"FVU {r['fvu']:.4f} (standardized input {r['fvu_normalized']:.4f})"
                             f"  L0 {r['l0']:.1f}  dead {r['dead_fraction']:.1%}  delta loss "
                             f"{r['delta_loss']:+.4f} nats ({r['clean_loss']:.4f} → "
                             f"{r['spliced_loss']:.4f}; {r['tokens']:,} tokens)")


@sae_app.command("describe")
def sae_describe(
    sae: Path = typer.Option(..., "--sae"), teacher: Path = typer.Option(..., "--teacher"),
    data: Path = typer.Option(..., "--data"), out: Path = typer.Option(..., "--out"),
    layer: Optional[int] = typer.Option(None, "--layer"),
    batches: int = typer.Option(50, "--batches"),
    force: bool = typer.Option(False, "--force"),
):
    """The concept dictionary: frequency, top contexts, promoted tokens and a label per latent."""
    from cocomix_mlx.files import refuse_existing, write_json
    from cocomix_mlx.sae_analysis import describe

    refuse_existing(out, force, inputs=(sae, teacher, data))
    check_tokenizer(teacher, data)
    model, tokenizer, net, layer = _load(sae, teacher, layer)
    result = describe(model, tokenizer, net, layer, data, batches=batches)
    write_json(out, result)
    alive = [x for x in result["latents"] if x["label"] != "dead"]
    console.print(f"{len(alive)} of {len(result['latents'])} latents fired on "
                  f"{result['tokens']:,} tokens; dictionary in {out}")
    for item in sorted(alive, key=lambda x: -x["frequency"])[:8]:
        console.print(f"  {item['index']:>6}  {item['frequency']:.3%}  {item['label']}",
                      highlight=False)
