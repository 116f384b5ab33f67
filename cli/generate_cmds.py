"""``cocomix generate``."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

import typer

from .common import console, dictionary_or_sae_default, print_token_rows


def generate(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory (NTP, CoCoMix, converted)."),
    prompt: str = typer.Option(..., "--prompt", help="Text to continue."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", "-m", help="Tokens to generate (default: 256, or what fits in the "
                                         "model's context after the prompt)."),
    temp: float = typer.Option(0.0, "--temp", help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(0.0, "--top-p"),
    min_p: float = typer.Option(0.0, "--min-p"),
    top_k: int = typer.Option(0, "--top-k"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    steer: list[str] = typer.Option([], "--steer", help="CONCEPT=ALPHA, repeatable; ALPHA in [-10, 10]."),
    span: str = typer.Option("all", "--span", help="Steer the prompt, the generated tokens, or all."),
    sae: Optional[Path] = typer.Option(None, "--sae", help="Steer a plain model through this SAE."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Block the SAE reads (with --sae)."),
    dictionary: Optional[Path] = typer.Option(None, "--concepts",
                                              help="Concept dictionary (`sae describe`) for NAME=ALPHA "
                                              "(default: concepts.json in the --sae directory)."),
):
    """Generate text, optionally steering concepts (CoCoMix models)."""
    import cocomix_mlx as cm
    from cocomix_mlx.generate import parse_steer, resolve_steer, stream

    net, tokenizer = cm.load(model)
    steering = parse_steer(steer)
    dictionary, names = dictionary_or_sae_default(dictionary, sae), None
    if dictionary is not None:
        from cocomix_mlx.sae_analysis import concept_names

        names = concept_names(dictionary)
    sae_model = cm.load_sae(sae) if sae is not None else None
    if steering and sae_model is None:
        resolve_steer(net, steering, names)
    responses = stream(net, tokenizer, prompt, max_tokens=max_tokens, temp=temp, top_p=top_p,
                       min_p=min_p, top_k=top_k, repetition_penalty=repetition_penalty,
                       seed=seed, steer=steering, span=span, sae=sae_model, layer=layer,
                       names=names)
    first = next(responses, None)  # a bad setting fails here, before anything is printed
    console.print(prompt, end="", style="bold", highlight=False, markup=False)
    last = None
    for last in itertools.chain([first] if first is not None else [], responses):
        console.print(last.text, end="", highlight=False, markup=False)
    console.print()
    if last is not None:
        console.print(f"[dim]prompt {last.prompt_tokens} tokens at {last.prompt_tps:.0f} tok/s, "
                      f"generated {last.generation_tokens} at {last.generation_tps:.1f} tok/s[/]")


def concepts(
    text: str = typer.Argument(..., help="Text to inspect."),
    model: Path = typer.Option(..., "--model", help="A CoCoMix checkpoint, or any model with --sae."),
    top: int = typer.Option(5, "--top", help="Concepts per token."),
    dictionary: Optional[Path] = typer.Option(None, "--concepts",
                                              help="concepts.json from `sae describe`: labels "
                                              "(default: the one in the --sae directory)."),
    sae: Optional[Path] = typer.Option(None, "--sae", help="Read this SAE's active latents instead "
                                                            "of predicted concepts."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Block the SAE reads (with --sae)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Per token, the concepts a CoCoMix model predicts (logits), or with --sae the SAE latents
    active in the residual stream (activations), with dictionary labels."""
    import cocomix_mlx as cm
    from cocomix_mlx.generate import predicted_concepts, sae_latents
    from cocomix_mlx.sae_analysis import dictionary_labels

    net, tokenizer = cm.load(model)
    dictionary = dictionary_or_sae_default(dictionary, sae)
    labels = dictionary_labels(dictionary) if dictionary is not None else None
    if sae is None:
        rows, key = predicted_concepts(net, tokenizer, text, top, labels), "logit"
    else:
        rows = sae_latents(net, tokenizer, cm.load_sae(sae), text, top, labels, layer)
        key = "activation"
    what = "predicted concepts" if sae is None else "active SAE latents"
    print_token_rows(rows, as_json, f"top {top} {what} per token",
                     f"concepts (index: {key}, label)", lambda row: ", ".join(
                         f"{c['index']}: {c[key]:.2f}" + (f" {c['label']}" if c["label"] else "")
                         for c in row["concepts"]))
