"""``cocomix tokenizer``, ``cocomix data`` and ``cocomix eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from .common import byte_progress, console

tokenizer_app = typer.Typer(no_args_is_help=True, help="Train or import tokenizers.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare token shards.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate checkpoints.")


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
    inputs: List[Path] = typer.Argument(..., help=".txt, .txt.gz, .jsonl (field text), folders."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer directory."),
    out: Path = typer.Option(..., "--out", help="Output data directory."),
    val_fraction: float = typer.Option(0.01, "--val-fraction", help="Tail of each input held out."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Tokenize text into memory-mapped train.bin / val.bin shards with meta.json."""
    from cocomix_mlx.data import prepare

    with byte_progress("tokenizing") as progress:
        meta = prepare([str(p) for p in inputs], str(tokenizer), str(out),
                       val_fraction=val_fraction, progress=progress, force=force)
    console.print(f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} validation tokens "
                  f"({meta['dtype']}) in {out}")


@eval_app.command("ppl")
def eval_ppl(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory."),
    data: Path = typer.Option(..., "--data", help="Data directory with val.bin."),
    seq_len: int = typer.Option(0, "--seq-len", help="Window length (0: the model's context)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_batches: int = typer.Option(0, "--max-batches", help="0: the whole split."),
    split: str = typer.Option("val", "--split", help="val or train."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Perplexity of a checkpoint on a data split."""
    from cocomix_mlx.evaluate import perplexity

    result = perplexity(str(model), str(data), seq_len=seq_len, batch_size=batch_size,
                        max_batches=max_batches, split=split)
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"{split} loss {result['loss']:.4f}  perplexity {result['ppl']:.3f}  "
                  f"({result['tokens']:,} tokens)")


@eval_app.command("mc")
def eval_mc(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory."),
    tasks: Path = typer.Option(..., "--tasks", help='JSONL: {"context", "choices", "gold"}.'),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Zero-shot multiple choice by log-likelihood (acc and length-normalized acc_norm)."""
    import cocomix_mlx as cm
    from cocomix_mlx.evaluate import multiple_choice, read_tasks

    items = read_tasks(tasks)
    net, tokenizer = cm.load(model)
    result = multiple_choice(net, tokenizer, items)
    if as_json:
        console.print_json(json.dumps(result))
    else:
        console.print(f"{tasks.name}: acc {result['acc']:.4f}  acc_norm {result['acc_norm']:.4f}  "
                      f"({result['n']} items)")


@eval_app.command("lambada")
def eval_lambada(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory."),
    text: List[Path] = typer.Option(..., "--text", help="Held-out text (.txt, .gz)."),
    n: int = typer.Option(200, "--n", help="Number of items."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """LAMBADA-style last-word prediction on paragraphs of held-out text."""
    import cocomix_mlx as cm
    from cocomix_mlx.data import iter_documents
    from cocomix_mlx.evaluate import last_word, last_word_items

    body = "".join(chunk for _, chunk in iter_documents([str(p) for p in text]))
    items = last_word_items(body, n)
    net, tokenizer = cm.load(model)
    result = last_word(net, tokenizer, items)
    if as_json:
        console.print_json(json.dumps(result))
    else:
        console.print(f"last word: acc {result['acc']:.4f}  target ppl {result['ppl']:.2f}  "
                      f"({result['n']} items)")
