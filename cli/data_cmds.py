"""``cocomix tokenizer`` and ``cocomix data``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import byte_progress, console, fail

tokenizer_app = typer.Typer(no_args_is_help=True, help="Train or import tokenizers.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare token shards.")


@tokenizer_app.command("train")
def tokenizer_train(
    inputs: List[Path] = typer.Argument(..., help="Text (.txt, .txt.gz, .jsonl, folders), or an "
                                        "existing Hugging Face tokenizer dir, or GPT-2's "
                                        "encoder.json + vocab.bpe."),
    vocab_size: int = typer.Option(8192, "--vocab-size", help="Vocabulary size for new BPE."),
    out: Path = typer.Option(..., "--out", help="Output tokenizer directory."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Train a sentencepiece BPE tokenizer (byte fallback), or import an existing one."""
    from cocomix_mlx.tokenizer import build_tokenizer

    with byte_progress("reading text") as progress:
        info = build_tokenizer([str(p) for p in inputs], vocab_size, str(out), force=force,
                               progress=progress)
    console.print(f"tokenizer ({info['kind']}, vocab {info['vocab_size']}) written to {out}")


@data_app.command("prepare")
def data_prepare(
    inputs: Optional[List[Path]] = typer.Argument(
        None, help=".txt, .txt.gz, .jsonl, .parquet, folders (or --hf-dataset)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer directory."),
    out: Path = typer.Option(..., "--out", help="Output data directory."),
    val_fraction: float = typer.Option(0.01, "--val-fraction", help="Tail of each input held out."),
    text_field: str = typer.Option("text", "--text-field", help="JSONL field or Parquet column "
                                   "holding each document."),
    max_tokens: int = typer.Option(0, "--max-tokens", help="Stop after this many training "
                                   "tokens (0: read everything)."),
    split_seed: Optional[int] = typer.Option(
        None, "--split-seed", help="Hold out whole documents drawn with this seed, as Hugging "
        "Face datasets' train_test_split does (OpenWebText: --val-fraction 0.0005 --split-seed "
        "2357), instead of the tail of each input."),
    hf_dataset: Optional[str] = typer.Option(
        None, "--hf-dataset", help="A Hugging Face Hub dataset (owner/name) to download and read, "
        "e.g. HuggingFaceFW/fineweb-edu."),
    hf_subset: Optional[str] = typer.Option(
        None, "--hf-subset", help="Its subset (a config of the dataset card, e.g. sample-10BT, "
        "or a folder of the repository)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Tokenize text into memory-mapped train.bin / val.bin shards with meta.json."""
    from cocomix_mlx.data import prepare

    if bool(inputs) == bool(hf_dataset):
        fail("give input files or --hf-dataset (one of them)")
    if hf_dataset:
        from cocomix_mlx.download import fetch_dataset

        inputs = fetch_dataset(hf_dataset, hf_subset, revision)
    elif hf_subset or revision:
        fail("--hf-subset and --revision go with --hf-dataset")
    with byte_progress("tokenizing") as progress:
        meta = prepare(list(inputs), str(tokenizer), str(out),
                       val_fraction=val_fraction, progress=progress, force=force,
                       text_field=text_field, max_tokens=max_tokens, split_seed=split_seed)
    console.print(f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} validation tokens "
                  f"({meta['dtype']}) in {out}")
