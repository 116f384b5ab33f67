"""GPT-2 backbone, numerically identical to Hugging Face ``GPT2LMHeadModel``.

Weights use mlx-lm's ``gpt2`` key layout (``model.h.0.attn.c_attn.weight``, Linear (out, in)), so
an NTP checkpoint of this model is an mlx-lm checkpoint. Decoding uses mlx-lm cache objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs

from .. import ops
from .base import LM, select_rows


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

    @property
    def depth(self) -> int:
        return self.n_layer

    rotary = False  # learned positions, added once at the embedding


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
        q, mask = select_rows(q, mask, rows, k.shape[2])
        dropout = self.attn_dropout if self.training and self.attn_pdrop > 0 else None
        out = ops.attention(q, k, v, self.scale, mask, dropout)
        return self.c_proj(out.transpose(0, 2, 1, 3).reshape(B, q.shape[2], D))


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
                 rows: Optional[slice] = None, slots: Optional[str] = None) -> mx.array:
        """The block over ``x``; with ``rows``, its output at those positions only. Positions
        are learned and added at the embedding, so ``slots`` changes nothing here."""
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


class Model(LM):
    """GPT-2 language model, the head tied to ``wte``."""

    NORMS = (".ln_",)
    RESIDUAL_OUT = ("attn.c_proj.weight", "mlp.c_proj.weight")

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.model = GPT2Model(args)
        self.width, self.depth, self.context = args.n_embd, args.n_layer, args.n_positions

    @property
    def layers(self):
        return self.model.h

    def embed(self, inputs: mx.array, offset: int = 0) -> mx.array:
        m = self.model
        return m.drop(m.wte(inputs) + m.wpe(mx.arange(offset, offset + inputs.shape[1])))

    def norm(self, h: mx.array) -> mx.array:
        return self.model.ln_f(h)

    def logits(self, h: mx.array) -> mx.array:
        return self.model.wte.as_linear(h)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Accept our own keys unchanged; drop HF's causal-mask buffers."""
        return {k: v for k, v in weights.items()
                if not (k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"))}

    def hf_config(self) -> dict[str, Any]:
        a = self.args
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": a.vocab_size, "n_positions": a.n_positions, "n_ctx": a.n_ctx,
            "n_embd": a.n_embd, "n_layer": a.n_layer, "n_head": a.n_head,
            "layer_norm_epsilon": a.layer_norm_epsilon, "embd_pdrop": a.embd_pdrop,
            "attn_pdrop": a.attn_pdrop, "resid_pdrop": a.resid_pdrop,
            "activation_function": "gelu_new", "tie_word_embeddings": True,
        }
