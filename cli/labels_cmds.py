"""``cocomix labels build|inspect``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from .common import console, err_console, print_token_rows, warn_if_slow_blas

labels_app = typer.Typer(no_args_is_help=True,
                         help="Concept labels computed once from a teacher and its SAE.")
FLAGS = {0: "none", 1: "zero", 2: "ok"}


@labels_app.command("build")
def build(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher checkpoint (any tokenizer)."),
    sae: Path = typer.Option(..., "--sae", help="SAE on the teacher's layer."),
    data: Path = typer.Option(..., "--data", help="The student's token shards."),
    out: Path = typer.Option(..., "--out", help="Label store directory."),
    kind: str = typer.Option("attribution", "--labels", help="attribution or activation."),
    k_attr: int = typer.Option(4, "--k-attr", help="Labels per position."),
    window: int = typer.Option(0, "--window", help="Teacher window (0: its context, <= 1024)."),
    stride: int = typer.Option(0, "--stride", help="Tokens between windows (0: window / 2)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per teacher batch."),
    layer: int = typer.Option(-1, "--layer", help="Teacher block the SAE reads (-1: the SAE's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted build."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Run the teacher over the data once and store each token's concept labels."""
    warn_if_slow_blas()
    from cocomix_mlx import labels

    cfg = labels.BuildConfig(kind=kind, k_attr=k_attr, window=window, stride=stride,
                             batch_size=batch_size, layer=layer)
    columns = [TextColumn("[bold]labels"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[speed]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    with Progress(*columns, console=err_console, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("labels", total=None, speed="-")

        def progress(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total, speed=f"{speed:.0f}" if speed else "-")

        meta = labels.build(teacher, sae, data, out, cfg, resume=resume, force=force,
                            progress=progress)
    kind_line = "cross-tokenizer" if meta["aligned"] else "same tokenizer"
    console.print(f"{meta['kind']} labels, k_attr={meta['k_attr']}, layer {meta['layer']}, window "
                  f"{meta['window']} / stride {meta['stride']} ({kind_line}): train "
                  f"{meta['train']['labelled']}/{meta['train']['tokens']} labelled, val "
                  f"{meta['val']['labelled']}/{meta['val']['tokens']}; store in {out}")


@labels_app.command("inspect")
def inspect(
    store: Path = typer.Argument(..., help="Label store directory."),
    data: Path = typer.Option(..., "--data", help="The token shards it was built for."),
    dictionary: Optional[Path] = typer.Option(None, "--concepts",
                                              help="concepts.json from `sae describe`: names."),
    at: int = typer.Option(0, "--at", help="First token position."),
    count: int = typer.Option(32, "--tokens", help="Positions to show."),
    split: str = typer.Option("train", "--split", help="train or val."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """A passage with each token's stored labels, named through the concept dictionary."""
    from cocomix_mlx import labels
    from cocomix_mlx.sae_analysis import read_dictionary

    names = None
    if dictionary is not None:
        names = {item["index"]: item["label"] for item in read_dictionary(dictionary)}
    rows = labels.inspect(labels.open(store), data, split, at, count, names)
    print_token_rows(rows, as_json, f"stored labels, {split} positions {at}..{rows[-1]['position']}",
                     "labels (index label)", lambda row: ", ".join(
                         f"{c['index']}" + (f" {c['label']}" if c["label"] else "")
                         for c in row["labels"]) or f"[dim]{FLAGS[row['flag']]}[/]")
