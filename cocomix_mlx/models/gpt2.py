"""GPT-2 backbone, numerically identical to Hugging Face ``GPT2LMHeadModel``.

Weights use mlx-lm's ``gpt2`` key layout (``model.h.0.attn.c_attn.weight``, Linear (out, in)), so
an NTP checkpoint of this model is an mlx-lm checkpoint. Decoding uses mlx-lm cache objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.cache import KVCache

from .. import ops


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "gpt2"
    vocab_size: int = 50257
    n_positions: int = 1024
    n_ctx: int = 0  # Hugging Face duplicate of n_positions; 0 means "same"
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0

    def __post_init__(self):
        if not self.n_ctx:
            self.n_ctx = self.n_positions
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_head = args.n_head
        self.scale = (args.n_embd // args.n_head) ** -0.5
        self.c_attn = nn.Linear(args.n_embd, 3 * args.n_embd)
        self.c_proj = nn.Linear(args.n_embd, args.n_embd)
        self.attn_pdrop = args.attn_pdrop
        self.attn_dropout = nn.Dropout(args.attn_pdrop)

    def __call__(self, x: mx.array, mask: Any = "causal", cache: Any = None,
                 rows: Optional[slice] = None) -> mx.array:
        """Attention over ``x`` (B, L, D); with ``rows``, the output at those positions only
        (every position's keys and values still enter the cache)."""
        B, L, D = x.shape
        q, k, v = mx.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (a.reshape(B, L, self.n_head, -1).transpose(0, 2, 1, 3) for a in (q, k, v))
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        if rows is not None:
            q = q[:, :, rows]
            if isinstance(mask, mx.array):
                mask = mask[..., rows, :]
            elif mask is not None:
                mask = row_mask(range(L)[rows], L, k.shape[2])
        dropout = self.attn_dropout if self.training and self.attn_pdrop > 0 else None
        out = ops.attention(q, k, v, self.scale, mask, dropout)
        return self.c_proj(out.transpose(0, 2, 1, 3).reshape(B, q.shape[2], D))


def row_mask(kept: range, queries: int, keys: int) -> Optional[mx.array]:
    """The causal mask (bottom-right aligned) of the ``kept`` rows of ``queries`` queries over
    ``keys`` keys; None when only the last query is kept (it sees every key)."""
    if len(kept) == 1 and kept[0] == queries - 1:
        return None
    shift = keys - queries
    positions = mx.arange(kept.start + shift, kept.stop + shift, kept.step)
    return positions[:, None] >= mx.arange(keys)[None]


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.c_fc = nn.Linear(args.n_embd, 4 * args.n_embd)
        self.c_proj = nn.Linear(4 * args.n_embd, args.n_embd)

    def __call__(self, x: mx.array) -> mx.array:
        return self.c_proj(ops.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ln_1 = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)
        self.attn = Attention(args)
        self.ln_2 = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)
        self.mlp = MLP(args)
        self.dropout = nn.Dropout(args.resid_pdrop)

    def __call__(self, x: mx.array, mask: Any = "causal", cache: Any = None,
                 rows: Optional[slice] = None) -> mx.array:
        """The block over ``x``; with ``rows``, its output at those positions only."""
        a = self.attn(self.ln_1(x), mask, cache, rows)
        x = (x if rows is None else x[:, rows]) + self.dropout(a)
        return x + self.dropout(self.mlp(self.ln_2(x)))


class GPT2Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.wte = nn.Embedding(args.vocab_size, args.n_embd)
        self.wpe = nn.Embedding(args.n_positions, args.n_embd)
        self.drop = nn.Dropout(args.embd_pdrop)
        self.h = [Block(args) for _ in range(args.n_layer)]
        self.ln_f = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)

    def embed(self, inputs: mx.array, offset: int = 0) -> mx.array:
        positions = mx.arange(offset, offset + inputs.shape[1])
        return self.drop(self.wte(inputs) + self.wpe(positions))

    def run_blocks(self, h: mx.array, start: int, stop: int, cache=None) -> mx.array:
        """Run blocks ``start..stop-1`` causally over ``h``; ``cache`` is the full per-layer list."""
        for i in range(start, stop):
            c = cache[i] if cache is not None else None
            mask = "causal" if h.shape[1] > 1 else None
            h = self.h[i](h, mask, c)
        return h


def cache_offset(cache) -> int:
    return cache[0].offset if cache is not None and cache[0] is not None else 0


class TiedLM(nn.Module):
    """What every GPT-2-shaped language model here shares: the backbone, the head tied to
    ``wte``, mlx-lm's loading hooks and KV caches."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = GPT2Model(args)

    def logits(self, h: mx.array) -> mx.array:
        return self.model.wte.as_linear(h)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Accept our own keys unchanged; drop HF's causal-mask buffers."""
        return {k: v for k, v in weights.items()
                if not (k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"))}

    @property
    def layers(self):
        return self.model.h

    def make_cache(self):
        return [KVCache() for _ in self.model.h]


class Model(TiedLM):
    """GPT-2 language model."""

    def __call__(self, inputs: mx.array, cache=None, head: bool = True) -> mx.array:
        """Next-token logits (B, T, V); with ``head=False`` the final hidden states (B, T, d)
        after ``ln_f`` that the head reads."""
        m = self.model
        h = m.ln_f(m.run_blocks(m.embed(inputs, cache_offset(cache)), 0, len(m.h), cache))
        return self.logits(h) if head else h


def init_weights(model: nn.Module, n_layer: int, seed: int = 0) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights and embeddings, zero biases, unit LayerNorms,
    residual output projections scaled by 1/sqrt(2 n_layer)."""
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    new = []
    for key, (name, p) in zip(keys, params):
        is_norm = ".ln_" in name or name.startswith("ln_")
        if name.endswith("bias") or is_norm:
            value = mx.ones_like(p) if is_norm and name.endswith("weight") else mx.zeros_like(p)
        else:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
            value = std * mx.random.normal(p.shape, key=key)
        new.append((name, value.astype(p.dtype)))
    model.update(tree_unflatten(new))
