"""Files written so that a crash never leaves half of them: directories built beside their
target and swapped in with renames, JSON through a renamed temporary, safetensors. A leaf module:
it imports nothing else of the package but its errors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from .errors import CheckpointError, ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def refuse_existing(path: str | Path, force: bool, empty_ok: bool = False,
                    inputs: tuple = ()) -> None:
    """The one guard of every writer: an existing output (a non-empty one, with ``empty_ok``)
    is replaced only with ``--force``, and never when it is, or holds, one of ``inputs`` (the
    files and directories the command reads), with or without ``--force``."""
    path = Path(path)
    refuse_inputs(path, inputs)
    if path.exists() and not force and not (empty_ok and path.is_dir() and
                                            not any(path.iterdir())):
        raise ConfigError(f"{path} already exists; pass --force to replace it or choose another "
                          "output")


def refuse_inputs(path: str | Path, inputs) -> None:
    """Refuse an output that is, or is a directory holding, one of ``inputs``: replacing it
    would delete what the command reads."""
    out = Path(path).resolve()
    for source in inputs:
        if source is None or str(source) == "":
            continue
        real = Path(source).resolve()
        if real == out or out in real.parents:
            raise ConfigError(f"the output {path} {'is' if real == out else 'holds'} the input "
                              f"{source}; choose another output")


def recover(path: str | Path) -> Path:
    """If a crash happened between the two renames of a save, put the old checkpoint back."""
    path = Path(path)
    old = _old_path(path)
    if not path.exists() and old.exists():
        old.rename(path)
    elif path.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return path


def remove_stale(path: str | Path) -> None:
    """Remove the temporary directories :func:`atomic_directory` leaves beside ``path`` when a
    process dies inside ``write`` (call it when no save of ``path`` is in progress)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_directory(path: str | Path, write, verify=None) -> Any:
    """Call ``write(tmp_dir)``, then ``verify(tmp_dir)`` when given, and only then move the
    result to ``path`` in one swap; returns what ``verify`` returned (else ``path``).

    A failure inside ``write`` or ``verify`` removes the temporary directory and leaves ``path``
    untouched, so an output that does not read back never replaces a good one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the output follows the umask
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; choose another "
                              "output") from None
    try:
        write(tmp)
        result = verify(tmp) if verify is not None else path
        swap_in(tmp, path)
    except OSError as e:  # a full disk, a read-only directory: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; make room or choose "
                              "another output") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else (a list, a number, broken text) is corrupt."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}; is this a cocomix checkpoint directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"corrupt {path}: expected a JSON object, found "
                              f"{type(data).__name__}")
    return data


def save_weights(path: Path, tree: Any, fmt: str = "mlx") -> None:
    """Write ``tree``'s arrays as safetensors (``fmt``: the ``format`` metadata). MLX reports a
    failed write as a RuntimeError; it becomes the OSError it is (no space left when the file
    system lacks room for the arrays), which the atomic writers turn into a one-line error."""
    arrays = dict(tree_flatten(tree))
    try:
        mx.save_safetensors(str(path), arrays, metadata={"format": fmt})
    except RuntimeError as e:
        st = os.statvfs(Path(path).parent)
        full = st.f_bavail * st.f_frsize < sum(a.nbytes for a in arrays.values())
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      "No space left on device" if full else str(e), str(path)) from None


def load_weights(path: Path) -> dict[str, mx.array]:
    try:
        return mx.load(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    except (RuntimeError, ValueError, MemoryError) as e:
        raise CheckpointError(f"cannot read {path} ({e or type(e).__name__}); the file is corrupt "
                              "or truncated") from None
