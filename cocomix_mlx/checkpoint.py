"""Checkpoint directories in mlx-lm's format, written atomically.

A checkpoint holds ``config.json``, ``model.safetensors`` and the tokenizer files; a training run
adds ``optimizer.safetensors``, ``trainer_state.json``, ``config.toml`` and ``metrics.jsonl``.
Saving builds the whole directory beside the target and swaps it in with renames, so a crash
leaves either the previous checkpoint or the new one, never a mixture.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlx.nn as nn

from .errors import CheckpointError
from .files import read_json, recover, save_weights, write_json
from .models import hf_config, model_classes
from .tokenizer import TOKENIZER_FILES



def copy_tokenizer(src: str | Path, dst: Path) -> None:
    src = Path(src)
    found = [f for f in TOKENIZER_FILES if (src / f).exists()]
    if not found:
        raise CheckpointError(f"no tokenizer files in {src}")
    for name in found:
        shutil.copy2(src / name, dst / name)


def write_model_files(directory: Path, model: nn.Module, tokenizer_dir: str | Path | None,
                      extra_config: dict[str, Any] | None = None) -> None:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer into ``directory``."""
    config = hf_config(model)
    if tokenizer_dir is not None:
        from .tokenizer import load_tokenizer

        copy_tokenizer(tokenizer_dir, directory)
        eos = load_tokenizer(tokenizer_dir).eos_token_id
        config.update({"bos_token_id": eos, "eos_token_id": eos})
    config.update(extra_config or {})
    write_json(directory / "config.json", config)
    save_weights(directory / "model.safetensors", model.parameters())


def load_model(path: str | Path, lazy: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Model and config of a checkpoint directory (ours or any mlx-lm one)."""
    from mlx_lm.utils import load_model as _mlx_lm_load_model

    path = recover(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    read_json(path / "config.json")
    if not list(path.glob("model*.safetensors")):
        raise CheckpointError(f"no model.safetensors in {path}; is the checkpoint complete?")
    try:
        return _mlx_lm_load_model(path, lazy=lazy, get_model_classes=model_classes)
    except (RuntimeError, ValueError, KeyError, MemoryError) as e:
        raise CheckpointError(f"cannot load {path}: {e or type(e).__name__}") from None


def load(path: str | Path, lazy: bool = False):
    """``(model, tokenizer)`` of a checkpoint directory; the tokenizer is mlx-lm's wrapper."""
    from mlx_lm.utils import load_tokenizer

    from .compat import keep_leading_space

    model, config = load_model(path, lazy)
    if not any((Path(path) / name).exists() for name in ("tokenizer.json", "tokenizer.model",
                                                          "vocab.json")):
        raise CheckpointError(f"no tokenizer in {path} (tokenizer.json, tokenizer.model or "
                              "vocab.json); copy in the tokenizer files of the data it was "
                              "trained on")
    try:
        tokenizer = load_tokenizer(Path(path), eos_token_ids=config.get("eos_token_id"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {e}") from None
    keep_leading_space(tokenizer)
    return model, tokenizer
