"""Quantized checkpoints with MLX's own affine quantization (mlx-lm's ``quantize_model``).

Every Linear and Embedding whose input width is a multiple of the group size is quantized —
for CoCoMix models the concept predictor and compression layer too. The result is a regular
checkpoint directory (``config.json`` gains a ``quantization`` block) that ``cocomix_mlx.load``
and ``mlx_lm.load`` read.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from mlx.utils import tree_flatten

from .checkpoint import copy_tokenizer, load_model
from .files import atomic_directory, refuse_existing, save_weights, write_json
from .errors import CheckpointError, ConfigError

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def parameter_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def quantize_checkpoint(src: str | Path, out: str | Path, bits: int = 4, group_size: int = 64,
                        force: bool = False, in_place: bool = False) -> dict:
    """Write a ``bits``-bit copy of checkpoint ``src`` to ``out`` (atomically). ``out`` is never
    ``src`` unless ``in_place`` (a conversion quantizing what it just wrote)."""
    from mlx_lm.utils import quantize_model

    if bits not in BITS:
        raise ConfigError(f"--bits must be one of {', '.join(map(str, BITS))}, not {bits}")
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}")
    out = Path(out)
    refuse_existing(out, force or in_place, inputs=() if in_place else (src,))
    model, config = load_model(src)
    if "quantization" in config:
        raise ConfigError(f"{src} is already quantized; start from the full-precision checkpoint")
    before = parameter_bytes(model)
    with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm reports bits per weight on stdout
        model, qconfig = quantize_model(model, config, group_size, bits)
    qconfig.pop("quantization_config", None)

    def write(tmp: Path) -> None:
        try:
            copy_tokenizer(src, tmp)
        except CheckpointError:  # a weights-only checkpoint stays weights-only
            pass
        write_json(tmp / "config.json", qconfig)
        save_weights(tmp / "model.safetensors", model.parameters())

    atomic_directory(out, write, verify=load_model)
    return {"bits": bits, "group_size": group_size, "bytes_before": before,
            "bytes_after": parameter_bytes(model)}
