"""Every use of mlx-lm internals (names outside its documented API), in one place.

Each function here has a test in ``tests/test_compat.py`` that fails if mlx-lm changes what it
relies on; ``pyproject.toml`` pins the mlx-lm range those tests pass on.
"""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx


def model_classes(config: dict[str, Any]):
    """``(Model, ModelArgs)`` mlx-lm would build for ``config`` (``mlx_lm.utils._get_classes``)."""
    from mlx_lm.utils import _get_classes

    return _get_classes(config)


def attention_mask(h: mx.array, cache=None, window: Optional[int] = None):
    """The mask an mlx-lm model passes its blocks for hidden states ``h`` (``"causal"``, an
    array, or None for one query), as ``mlx_lm.models.base.create_attention_mask``."""
    from mlx_lm.models.base import create_attention_mask

    return create_attention_mask(h, cache, window_size=window)


def keep_leading_space(tokenizer) -> None:
    """mlx-lm's byte-level BPE detokenizer drops the first generated token's leading space, as
    if the text began there; ours always continues a prompt ("is" + " expected")."""
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    detokenizer = tokenizer._detokenizer
    if isinstance(detokenizer, BPEStreamingDetokenizer):
        detokenizer._maybe_trim_space = lambda text: text
