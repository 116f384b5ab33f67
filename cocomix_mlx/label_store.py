"""The label-store format and reading it: windows, identities, the store, batches with labels.

A store holds, for every token of a prepared data split, the ``k_attr`` concept labels the
teacher gives the position (the labels of docs/semantics.md, or the activation ablation's) and a flag:
``0`` no label (an unaligned position of a cross-tokenizer teacher), ``1`` labelled but every
score is zero (e.g. the end of the data), ``2`` labelled. The teacher runs over fixed windows of
``window`` tokens every ``stride`` tokens (the last one ending with the data); each window labels
the positions after the previous window's, up to but excluding its own last position (whose
next token it does not see), so every labelled position has at least ``window - stride`` tokens
of context counting itself. Window j labels positions ``[hi(j-1), hi(j))`` with
``hi(j) = start(j) + window - 1`` where the next window covers that position, else the window's
end. With ``stride == window`` and the student's ``batch_size`` and ``seq_len`` as window, the
labels equal the on-the-fly labels of a window-aligned student batch exactly.

Files: ``meta.json`` (settings, counts, and content hashes of teacher, SAE and data),
``{split}.labels.npy`` (N, k_attr) uint16 or uint32, ``{split}.flags.npy`` (N,) uint8.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .data import TokenDataset, load_meta
from .errors import ConfigError, DataError

FORMAT = 1
KINDS = ("attribution", "activation")
SPLITS = ("train", "val")
DEFAULT_MAX_WINDOW = 1024
Progress = Callable[[int, int], None]  # (tokens done, tokens in all)


@dataclass
class BuildConfig:
    """Settings of ``cocomix labels build``."""

    kind: str = "attribution"  # "attribution" (the paper's labels) | "activation" (ablation)
    k_attr: int = 4  # labels per position
    window: int = 0  # teacher window in its tokens; 0: the teacher's context, at most 1024
    stride: int = 0  # tokens between window starts; 0: window // 2
    batch_size: int = 8  # windows per teacher batch (the student's batch_size for exact parity)
    layer: int = -1  # teacher block the SAE reads; -1: the layer recorded with the SAE


# ---- windows ----------------------------------------------------------------------------------
def window_count(n: int, window: int, stride: int) -> int:
    """Windows over a stream of ``n`` tokens: starts 0, stride, ... and a last one ending at n."""
    return 1 if n <= window else -(-(n - window) // stride) + 1


def window_span(j: int, n: int, window: int, stride: int) -> tuple[int, int, int]:
    """``(start, lo, hi)``: window j starts at ``start`` and labels positions ``[lo, hi)``."""
    count = window_count(n, window, stride)
    width = min(n, window)

    def start(i: int) -> int:
        return min(i * stride, n - width)

    def hi(i: int) -> int:
        end = start(i) + width
        return end - 1 if i + 1 < count and start(i + 1) <= end - 1 else end

    return start(j), (hi(j - 1) if j else 0), hi(j)


# ---- identities -------------------------------------------------------------------------------
def content_hash(paths: list[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.name.encode())
        with io.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def teacher_identity(path: Path) -> str:
    files = [path / "config.json", *sorted(path.glob("model*.safetensors"))]
    return content_hash(files + [p for p in [path / "tokenizer.json"] if p.exists()])


def sae_identity(path: Path) -> str:
    return content_hash([path / "config.json", path / "sae.safetensors"])


def data_identity(path: Path, meta: dict) -> str:
    return content_hash([path / f"{s}.bin" for s in SPLITS], meta.get("tokenizer_id") or "")


# ---- the store --------------------------------------------------------------------------------
class LabelStore:
    """An open label store: ``meta`` and, per split, memory-mapped labels and flags."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise DataError(f"no label store in {self.path} (meta.json missing); build one with "
                            "`cocomix labels build`")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"corrupt {meta_path}: {e}; build the store again") from None
        if self.meta.get("format") != FORMAT or not self.meta.get("complete"):
            raise DataError(f"{self.path} is not a finished label store of format {FORMAT}; "
                            "build it again")

    @property
    def latents(self) -> int:
        return self.meta["sae"]["latents"]

    @property
    def k_attr(self) -> int:
        return self.meta["k_attr"]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels (N, k_attr), flags (N,))`` of a split, memory-mapped."""
        try:
            return (np.load(self.path / f"{name}.labels.npy", mmap_mode="r"),
                    np.load(self.path / f"{name}.flags.npy", mmap_mode="r"))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the {name} labels in {self.path}: {e}") from None

    def check(self, data_dir: str | Path, kind: Optional[str] = None,
              latents: Optional[int] = None, k_attr: Optional[int] = None) -> None:
        """Refuse a store made for other data, another label kind, SAE width or label count."""
        meta = load_meta(data_dir)
        if data_identity(Path(data_dir), meta) != self.meta["data"]["identity"]:
            raise DataError(f"the label store {self.path} was built for other data than "
                            f"{data_dir}; build one for this data with `cocomix labels build`")
        if kind is not None and kind != self.meta["kind"]:
            raise ConfigError(f"the label store holds {self.meta['kind']} labels, not {kind}; "
                              f"set --objective.labels {self.meta['kind']} or build another store")
        if latents is not None and latents != self.latents:
            raise ConfigError(f"the label store's SAE has {self.latents} latents but concept_dim "
                              f"is {latents}; set --concept-dim {self.latents}")
        if k_attr is not None and k_attr != self.k_attr:
            raise ConfigError(f"the label store holds {self.k_attr} labels per position, not "
                              f"k_attr={k_attr}; set --k-attr {self.k_attr} or build another store")


# ---- training from a store ----------------------------------------------------------------------
class LabeledDataset(TokenDataset):
    """A token shard whose batches carry their stored labels: ``(inputs, (targets, labels,
    flags))`` with ``labels`` (B, T, k_attr) int32 and ``flags`` (B, T) uint8 of the input
    positions."""

    def __init__(self, data_dir: str | Path, split: str, store: LabelStore):
        super().__init__(data_dir, split)
        self.labels, self.flags = store.split(split)
        if len(self.labels) != len(self):
            raise DataError(f"the label store {store.path} has {len(self.labels)} {split} "
                            f"positions but the data has {len(self)}; build it for this data")

    def take(self, starts, seq_len: int):
        inputs, targets = super().take(starts, seq_len)
        rows = [slice(s, s + seq_len) for s in starts]
        labels = np.stack([self.labels[r] for r in rows]).astype(np.int32)
        return inputs, (targets, labels, np.stack([self.flags[r] for r in rows]))


def inspect(store: LabelStore, data_dir: str | Path, split: str = "train", at: int = 0,
            count: int = 32, names: Optional[dict[int, str]] = None) -> list[dict]:
    """Positions ``at .. at+count`` of ``split``: each token's text, flag and labels (with
    their dictionary names when ``names`` is given)."""
    from .tokenizer import load_tokenizer

    if split not in SPLITS:
        raise ConfigError(f"--split must be train or val, not {split!r}")
    if count < 1:
        raise ConfigError(f"--tokens must be at least 1, not {count}")
    store.check(data_dir)
    tokens = TokenDataset(data_dir, split).tokens
    labels, flags = store.split(split)
    if not 0 <= at < len(tokens):
        raise DataError(f"--at {at} is outside the {split} split (0..{len(tokens) - 1})")
    tok = load_tokenizer(Path(data_dir) / "tokenizer")
    rows = []
    for p in range(at, min(len(tokens), at + count)):
        ids = [int(i) for i in labels[p]] if flags[p] else []
        rows.append({"position": p, "token": tok.decode([int(tokens[p])]), "flag": int(flags[p]),
                     "labels": [{"index": i, "label": (names or {}).get(i)} for i in ids]})
    return rows
