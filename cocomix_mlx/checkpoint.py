"""Checkpoint directories in mlx-lm's format, written atomically.

A checkpoint holds ``config.json``, ``model.safetensors`` and the tokenizer files; a training run
adds ``optimizer.safetensors``, ``trainer_state.json``, ``config.toml`` and ``metrics.jsonl``.
Saving builds the whole directory beside the target and swaps it in with renames, so a crash
leaves either the previous checkpoint or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import CheckpointError
from .models import hf_config, model_classes

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover(path: str | Path) -> Path:
    """If a crash happened between the two renames of a save, put the old checkpoint back."""
    path = Path(path)
    old = _old_path(path)
    if not path.exists() and old.exists():
        old.rename(path)
    elif path.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return path


def atomic_directory(path: str | Path, write, overwrite: bool = True) -> Path:
    """Call ``write(tmp_dir)`` and move the result to ``path`` in one swap.

    A failure inside ``write`` removes the temporary directory and leaves ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; choose another output or pass --force")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def swap_in(src: Path, path: Path) -> None:
    """Move the finished directory ``src`` to ``path``, replacing what is there with two renames
    (:func:`recover` restores the old one if a crash falls between them)."""
    recover(path)
    if path.exists():
        old = _old_path(path)
        path.rename(old)
        src.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(path)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically (a temporary sibling renamed over ``path``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}; is this a cocomix checkpoint directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {path}: {e}") from None


def copy_tokenizer(src: str | Path, dst: Path) -> None:
    src = Path(src)
    found = [f for f in TOKENIZER_FILES if (src / f).exists()]
    if not found:
        raise CheckpointError(f"no tokenizer files in {src}")
    for name in found:
        shutil.copy2(src / name, dst / name)


def save_weights(path: Path, tree: Any) -> None:
    mx.save_safetensors(str(path), dict(tree_flatten(tree)), metadata={"format": "mlx"})


def load_weights(path: Path) -> dict[str, mx.array]:
    try:
        return mx.load(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); the file is corrupt or truncated") from None


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
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot load {path}: {e}") from None


def load(path: str | Path, lazy: bool = False):
    """``(model, tokenizer)`` of a checkpoint directory; the tokenizer is mlx-lm's wrapper."""
    from mlx_lm.utils import load_tokenizer

    model, config = load_model(path, lazy)
    try:
        tokenizer = load_tokenizer(Path(path), eos_token_ids=config.get("eos_token_id"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {e}") from None
    _keep_leading_space(tokenizer._detokenizer)
    return model, tokenizer


def _keep_leading_space(detokenizer) -> None:
    """mlx-lm's byte-level BPE detokenizer drops the first generated token's leading space, as
    if the text began there; ours always continues a prompt ("is" + " expected")."""
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    if isinstance(detokenizer, BPEStreamingDetokenizer):
        detokenizer._maybe_trim_space = lambda text: text
