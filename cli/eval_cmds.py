"""``cocomix eval``: perplexity, multiple choice, last-word prediction, lm-evaluation-harness."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, fail, print_result

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


@eval_app.command("harness")
def eval_harness(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory (any kind we load)."),
    tasks: str = typer.Option("paper", "--tasks", help="Comma-separated lm-eval tasks; paper: "
                              "the paper's seven (LAMBADA, WikiText, HellaSwag, PIQA, SIQA, "
                              "ARC-Easy, WinoGrande)."),
    limit: Optional[float] = typer.Option(None, "--limit", help="Documents per task (or a "
                                          "fraction below 1)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot"),
    batch_size: int = typer.Option(8, "--batch-size"),
    steer: List[str] = typer.Option([], "--steer", help="CONCEPT=ALPHA, repeatable (CoCoMix)."),
    concepts: Optional[Path] = typer.Option(None, "--concepts", help="Concept dictionary for "
                                            "NAME=ALPHA."),
    include: Optional[Path] = typer.Option(None, "--include", help="A folder of task YAMLs of "
                                           "your own."),
    compare: List[Path] = typer.Option([], "--compare", help="More checkpoints, one row each."),
    out_json: Optional[Path] = typer.Option(None, "--json", help="Also write the results here."),
):
    """The paper's evaluation through lm-evaluation-harness (optional extra `eval`)."""
    from rich.table import Table

    import cocomix_mlx as cm
    from cocomix_mlx.files import refuse_existing, write_json
    from cocomix_mlx.generate import parse_steer
    from cocomix_mlx.harness import evaluate, paper_row
    from cocomix_mlx.sae_analysis import concept_names

    if out_json is not None:
        refuse_existing(out_json, force=False)
    if limit is not None and limit <= 0:
        fail(f"--limit must be positive, not {limit}")
    if include is not None and not include.is_dir():
        fail(f"--include {include} is not a folder of task YAMLs")
    missing = [str(p) for p in [model, *compare] if not (p / "config.json").is_file()]
    if missing:  # before hours of evaluation of the first model
        fail(f"no checkpoint (config.json) in {', '.join(missing)}")
    names = concept_names(concepts) if concepts else None
    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    results = {}
    for path in [model, *compare]:
        net, tokenizer = cm.load(path)
        results[str(path)] = evaluate(net, tokenizer, task_list, limit, num_fewshot, batch_size,
                                      include, parse_steer(steer) or None, names)
    if out_json is not None:
        write_json(out_json, results)
    rows = {run: paper_row(r) for run, r in results.items()}
    titles = [t for t, _ in next(iter(rows.values()))]
    table = Table(title="lm-evaluation-harness")
    table.add_column("model")
    if titles:  # the paper's Table 1 columns
        for t in titles:
            table.add_column(t, justify="right")
        for run, row in rows.items():
            table.add_row(run, *(f"{v:.2f}" if "ppl" in t else f"{100 * v:.1f}" for t, v in row))
    else:
        keys = sorted({(task, m) for r in results.values() for task, ms in r.items() for m in ms})
        for task, m in keys:
            table.add_column(f"{task} {m}", justify="right")
        for run, r in results.items():
            table.add_row(run, *(f"{r.get(task, {}).get(m, float('nan')):.4f}" for task, m in keys))
    console.print(table)
