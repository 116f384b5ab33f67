"""What every student family provides (GPT-2, Llama), so that CoCoMix is written once over them.

A family is one module with a ``ModelArgs`` (Hugging Face field names) and a ``Model`` derived
from :class:`LM`. The concept machinery (``models/cocomix.py``) and the read-side view
(``models/backbone.py``) use only the methods below: the embedding, blocks ``[start, stop)`` over
a stream of token slots or of interleaved [token, concept] slots, the final norm and the head.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.cache import KVCache

# How the blocks after the insertion point place an interleaved stream [h_1, c_1, h_2, c_2, ...]
# (docs/semantics.md): "shared" gives a concept slot its token's position, "consecutive" numbers
# the slots 0, 1, 2, ... Families with learned positions (GPT-2) add them at the embedding only.
SLOT_POSITIONS = ("shared", "consecutive")


def cache_offset(cache) -> int:
    return cache[0].offset if cache is not None and cache[0] is not None else 0


def row_mask(kept: range, queries: int, keys: int) -> Optional[mx.array]:
    """The causal mask (bottom-right aligned) of the ``kept`` rows of ``queries`` queries over
    ``keys`` keys; None when only the last query is kept (it sees every key)."""
    if len(kept) == 1 and kept[0] == queries - 1:
        return None
    shift = keys - queries
    positions = mx.arange(kept.start + shift, kept.stop + shift, kept.step)
    return positions[:, None] >= mx.arange(keys)[None]


def select_rows(q: mx.array, mask: Any, rows: Optional[slice], keys: int):
    """The queries (B, H, L, D) and mask of the ``rows`` a block computes (all when None)."""
    if rows is None:
        return q, mask
    L = q.shape[2]
    q = q[:, :, rows]
    if isinstance(mask, mx.array):
        return q, mask[..., rows, :]
    return q, (None if mask is None else row_mask(range(L)[rows], L, keys))


class LM(nn.Module):
    """A causal language model of one student family. Subclasses set ``self.args``,
    ``self.model`` (the inner module whose weights carry the family's mlx-lm key layout) and
    implement the abstract methods; blocks are called as
    ``block(h, mask, cache, rows=None, slots=None)``.

    ``rows`` (a slice) asks a block for its output at those positions only (every position's keys
    and values still enter its cache); ``slots`` is None for a stream of one slot per token, or
    one of :data:`SLOT_POSITIONS` for an interleaved [token, concept] stream.
    """

    NORMS: tuple[str, ...] = ()  # name fragments of the normalisation weights (initialised to 1)
    RESIDUAL_OUT: tuple[str, ...] = ()  # name endings of the projections into the residual stream

    def __init__(self, args):
        super().__init__()
        self.args = args
        self.model_type = args.model_type

    # ---- the family's pieces --------------------------------------------------------------------
    width: int
    depth: int
    context: int

    @property
    def layers(self) -> list:
        raise NotImplementedError

    def embed(self, inputs: mx.array, offset: int = 0) -> mx.array:
        """Token embeddings (B, T, d) of ``inputs`` whose first token is at position ``offset``."""
        raise NotImplementedError

    def norm(self, h: mx.array) -> mx.array:
        raise NotImplementedError

    def logits(self, h: mx.array) -> mx.array:
        raise NotImplementedError

    def hf_config(self) -> dict[str, Any]:
        """The ``config.json`` fields (Hugging Face names) that rebuild this model."""
        raise NotImplementedError

    # ---- built from them --------------------------------------------------------------------------
    def run_blocks(self, h: mx.array, start: int, stop: int, cache=None,
                   slots: Optional[str] = None, rows: Optional[slice] = None) -> mx.array:
        """Blocks ``start..stop-1`` causally over ``h``; ``cache`` is the full per-layer list;
        ``rows`` applies to the last of them."""
        for i in range(start, stop):
            c = cache[i] if cache is not None else None
            mask = "causal" if h.shape[1] > 1 else None
            h = self.layers[i](h, mask, c, rows if i == stop - 1 else None, slots)
        return h

    def __call__(self, inputs: mx.array, cache=None, head: bool = True) -> mx.array:
        """Next-token logits (B, T, V); with ``head=False`` the final normalized hidden states."""
        h = self.embed(inputs, cache_offset(cache))
        h = self.norm(self.run_blocks(h, 0, self.depth, cache))
        return self.logits(h) if head else h

    def make_cache(self):
        return [KVCache() for _ in self.layers]


def parameter_key(seed: int, name: str) -> mx.array:
    """The random key of parameter ``name`` for ``seed``: a function of both alone, so that two
    models built from one seed draw equal values for every parameter they share by name."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return mx.random.key(int.from_bytes(digest[:8], "little"))


def init_weights(model: LM, seed: int = 0) -> None:
    """GPT-2-style initialisation, keyed by parameter name: N(0, 0.02) weights and embeddings,
    zero biases, unit norms, the projections into the residual stream (``RESIDUAL_OUT``) scaled
    by 1/sqrt(2·depth)."""
    new = []
    residual_std = 0.02 / math.sqrt(2 * model.depth)
    for name, p in tree_flatten(model.parameters()):
        is_norm = any(part in name for part in model.NORMS)
        if name.endswith("bias") or is_norm:
            value = mx.ones_like(p) if is_norm and name.endswith("weight") else mx.zeros_like(p)
        else:
            std = residual_std if name.endswith(model.RESIDUAL_OUT) else 0.02
            value = std * mx.random.normal(p.shape, key=parameter_key(seed, name))
        new.append((name, value.astype(p.dtype)))
    model.update(tree_unflatten(new))
