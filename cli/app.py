"""``cocomix``: the command-line entry point."""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: sets up the BLAS before mlx is imported)

import sys
from pathlib import Path

import typer
from rich.table import Table

from cocomix_mlx.errors import CocomixError

from . import (convert_cmds, data_cmds, eval_cmds, generate_cmds, labels_cmds, quickstart,
               sae_cmds, serve_cmd, train_cmds)
from .common import console, err_console, print_error

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="CoCoMix in MLX: pretrain with continuous concepts, convert, generate.")
app.add_typer(data_cmds.tokenizer_app, name="tokenizer")
app.add_typer(data_cmds.data_app, name="data")
app.add_typer(eval_cmds.eval_app, name="eval")
app.add_typer(sae_cmds.sae_app, name="sae")
app.add_typer(labels_cmds.labels_app, name="labels")
app.add_typer(convert_cmds.convert_app, name="convert")
app.add_typer(convert_cmds.export_app, name="export")
app.add_typer(convert_cmds.teacher_app, name="teacher")
app.command("quickstart")(quickstart.quickstart)
app.command("generate")(generate_cmds.generate)
app.command("concepts")(generate_cmds.concepts)
app.command("serve")(serve_cmd.serve)


@app.command()
def quantize(src: Path = typer.Argument(..., help="Checkpoint directory."),
             out: Path = typer.Argument(..., help="Output checkpoint directory."),
             bits: int = typer.Option(4, "--bits", "-q", help="4 or 8 (also 2, 3, 5, 6)."),
             group_size: int = typer.Option(64, "--q-group-size", help="32, 64 or 128."),
             force: bool = typer.Option(False, "--force", help="Replace an existing OUT.")):
    """Quantize a checkpoint with MLX's affine quantization (concept head included)."""
    from cocomix_mlx.quantize import quantize_checkpoint

    r = quantize_checkpoint(src, out, bits, group_size, force)
    console.print(f"{bits}-bit (group {group_size}): {r['bytes_before'] / 2**20:.1f} MB → "
                  f"{r['bytes_after'] / 2**20:.1f} MB in {out}")


@app.command()
def plot(runs: list[Path] = typer.Argument(..., help="Run directories (with metrics.jsonl)."),
         out: Path = typer.Option(Path("loss.png"), "--out", help=".png, .pdf or .svg"),
         smooth: int = typer.Option(10, "--smooth", help="Moving average over logged steps."),
         force: bool = typer.Option(False, "--force", help="Replace an existing --out.")):
    """Training and validation loss curves of several runs on one figure."""
    from cocomix_mlx.plot import plot_runs

    console.print(f"wrote {plot_runs(runs, out, smooth, force)}")
app.command("pretrain", epilog=train_cmds.config_keys_help(),
            context_settings={"allow_extra_args": True,
                              "ignore_unknown_options": True})(train_cmds.pretrain)


@app.command()
def doctor(measure: bool = typer.Option(True, help="Measure fp32 matmul GFLOP/s.")):
    """Report MLX, device, BLAS (with measured matmul speed), memory and package versions."""
    from cocomix_mlx.backend import environment_report

    r = environment_report(measure=measure)
    table = Table(title="cocomix doctor", show_header=False)
    table.add_row("python", r["python"])
    table.add_row("platform", r["platform"])
    table.add_row("device", f"{r['device']} (default {r['default_device']})")
    table.add_row("cpu cores", str(r["cpu_count"]))
    table.add_row("memory", f"{r['memory_gb']:.1f} GB" if r["memory_gb"] else "unknown")
    blas = r["blas"] + (f" — {r['blas_library']}" if r["blas_library"] else "")
    table.add_row("BLAS", blas + (f" ({r['blas_detail']})" if r["blas_detail"] else ""))
    if "matmul_gflops" in r:
        g = r["matmul_gflops"]
        table.add_row("fp32 matmul 1024³", f"mlx {g['mlx']:.1f} GFLOP/s, numpy {g['numpy']:.1f}")
    for pkg, version in r["packages"].items():
        table.add_row(pkg, version or "[dim]not installed[/]")
    console.print(table)
    if r["blas"] == "too-late":
        err_console.print(f"[yellow]warning:[/] {r['blas_detail']}")
    elif r["blas"] == "not-found":
        err_console.print(f"[yellow]warning:[/] slow reference BLAS in use; {r['blas_detail']}")


INTERRUPTED = ("interrupted; nothing half-written is left (a training run continues from its "
               "last checkpoint with --resume)")


def main() -> None:
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit status 130
            err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
        if isinstance(code, int) and code:
            sys.exit(code)
    except CocomixError as e:
        print_error(str(e))
        sys.exit(2)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors (typer's own copy of click raises them)
        sys.exit(usage_error(e))
    except OSError as e:  # a path the library reached without a typed error (e.g. under a file)
        where = f" {e.filename}" if e.filename else ""
        print_error(f"cannot use{where}: {e.strerror or e}; check the path and its permissions")
        sys.exit(2)


def usage_error(e: "typer.TyperException") -> int:
    """A usage error as one line naming the help to read; returns the exit status. A bare
    command group (``cocomix``, ``cocomix sae``) has had its help printed by typer already."""
    message = " ".join(e.format_message().split()).rstrip(".")
    if not message:
        return 0
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "cocomix"
    print_error(f"{message}; see `{where} --help`")
    return 2


if __name__ == "__main__":
    main()
