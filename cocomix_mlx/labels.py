"""Label stores: concept labels computed once from a teacher and its SAE (docs/labels.md).

The public API (``cm.labels``): :func:`build` a store (``label_build.py``), :func:`open` one,
train from it through :class:`LabeledDataset`, :func:`inspect` it. The format, the window rule
and the identities are in ``label_store.py``.
"""

from __future__ import annotations

from pathlib import Path

from .label_build import build
from .label_store import (DEFAULT_MAX_WINDOW, FORMAT, KINDS, SPLITS, BuildConfig, LabeledDataset,
                          LabelStore, Progress, content_hash, data_identity, inspect,
                          sae_identity, teacher_identity, window_count, window_span)

__all__ = ["DEFAULT_MAX_WINDOW", "FORMAT", "KINDS", "SPLITS", "BuildConfig", "LabeledDataset",
           "LabelStore", "Progress", "build", "content_hash", "data_identity", "inspect", "open",
           "sae_identity", "teacher_identity", "window_count", "window_span"]


def open(path: str | Path) -> LabelStore:  # noqa: A001  (cm.labels.open, like io.open)
    return LabelStore(path)
