"""``cocomix eval``: perplexity, multiple choice, last-word prediction."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .common import print_result

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate checkpoints.")


@eval_app.command("ppl")
def eval_ppl(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory."),
    data: Path = typer.Option(..., "--data", help="Data directory with val.bin."),
    seq_len: int = typer.Option(0, "--seq-len", help="Window length (0: the model's context)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_batches: int = typer.Option(0, "--max-batches", help="0: the whole split."),
    split: str = typer.Option("val", "--split", help="val or train."),
    blocks: int = typer.Option(0, "--blocks", help="Score disjoint blocks of N tokens, as the "
                               "official OpenWebText evaluation (N = 1024) does."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Perplexity of a checkpoint on a data split."""
    from cocomix_mlx.evaluate import perplexity

    result = perplexity(str(model), str(data), seq_len=seq_len, batch_size=batch_size,
                        max_batches=max_batches, split=split, blocks=blocks)
    print_result(result, as_json, f"{split} loss {result['loss']:.4f}  perplexity "
                                  f"{result['ppl']:.3f}  ({result['tokens']:,} tokens)")


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
    print_result(result, as_json, f"{tasks.name}: acc {result['acc']:.4f}  acc_norm "
                                  f"{result['acc_norm']:.4f}  ({result['n']} items)")


@eval_app.command("lambada")
def eval_lambada(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory."),
    text: List[Path] = typer.Option(..., "--text", help="Held-out text (.txt, .gz)."),
    n: int = typer.Option(200, "--n", help="Number of items."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """LAMBADA-style last-word prediction on paragraphs of held-out text."""
    import cocomix_mlx as cm
    from cocomix_mlx.text import iter_documents
    from cocomix_mlx.evaluate import last_word, last_word_items

    body = "".join(chunk for _, chunk in iter_documents([str(p) for p in text]))
    items = last_word_items(body, n)
    net, tokenizer = cm.load(model)
    result = last_word(net, tokenizer, items)
    print_result(result, as_json, f"last word: acc {result['acc']:.4f}  target ppl "
                                  f"{result['ppl']:.2f}  ({result['n']} items)")
