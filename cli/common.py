"""Shared CLI helpers: consoles, one-line errors, progress bars."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

console = Console()
err_console = Console(stderr=True)


def warn_if_slow_blas() -> None:
    """One warning line, with the fix, when MLX runs on its slow reference BLAS (Linux)."""
    from cocomix_mlx.backend import BLAS

    if BLAS.status in ("not-found", "failed", "too-late"):
        err_console.print(f"[yellow]warning:[/] MLX uses its slow reference BLAS (matmuls ~40x "
                          f"slower): {BLAS.detail}", highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """``error: MESSAGE`` on one line of stderr; the message is printed as it is (a path or a
    user string with ``[...]`` in it is not read as markup)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(message)), highlight=False,
                      soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit (status 2: the user can fix it)."""
    print_error(message)
    raise typer.Exit(code)


@contextmanager
def byte_progress(description: str):
    """A progress bar for a byte-counting ``progress(done, total)`` callback."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def step_progress(total: int, start: int = 0,
                  fields: tuple[str, ...] = ("loss", "speed")) -> tuple[Progress, int]:
    """A step progress bar showing ``fields`` (``speed`` is shown as tokens/s), with ETA."""
    shown = [TextColumn("{task.fields[speed]} tok/s") if f == "speed"
             else TextColumn(f"{f} {{task.fields[{f}]}}") for f in fields]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), *shown,
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    bar = Progress(*columns, console=err_console, disable=not sys.stderr.isatty())
    task = bar.add_task("train", total=total, completed=start, **{f: "-" for f in fields})
    return bar, task


def print_result(result: dict, as_json: bool, line: str) -> None:
    """A command's result: its JSON, or one readable ``line``."""
    if as_json:
        console.print_json(json.dumps(result))
    else:
        console.print(line)


def print_token_rows(rows: list[dict], as_json: bool, title: str, header: str, cells) -> None:
    """Per-token rows (``position``, ``token``, ...) as JSON or as a table whose third column
    is ``cells(row)``."""
    if as_json:
        console.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column(header)
    for row in rows:
        table.add_row(str(row["position"]), repr(row["token"]), cells(row))
    console.print(table)


def dictionary_or_sae_default(dictionary: Optional[Path], sae: Optional[Path]) -> Optional[Path]:
    """``--concepts``, or else the ``concepts.json`` shipped inside the ``--sae`` directory."""
    if dictionary is None and sae is not None and (sae / "concepts.json").is_file():
        return sae / "concepts.json"
    return dictionary
