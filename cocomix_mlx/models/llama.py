"""Llama-family student: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, optional
Qwen3-style QK-norm; numerically identical to Hugging Face ``LlamaForCausalLM`` (and, with
``qk_norm``, ``Qwen3ForCausalLM``) and to mlx-lm's ``llama`` / ``qwen3`` models.

Weights use mlx-lm's (and Hugging Face's) key layout (``model.layers.0.self_attn.q_proj.weight``,
Linear (out, in)), so an NTP checkpoint of this model is a plain mlx-lm ``llama`` checkpoint
(``qwen3`` with QK-norm). The MLP is mlx-lm's; attention is ours, because after CoCoMix's
insertion point its rotary positions follow the stream's slots (``slots``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.llama import MLP

from .. import ops
from .base import LM, select_rows


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "llama"
    vocab_size: int = 49152
    hidden_size: int = 576
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: Optional[int] = None  # None: as many as num_attention_heads
    intermediate_size: int = 1536
    head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE (Qwen3)

    def __post_init__(self):
        if self.model_type == "qwen3":
            self.qk_norm = True
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                                 f"num_attention_heads={self.num_attention_heads}; set head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not divisible "
                             f"by num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} is odd; RoPE rotates pairs of dimensions")

    @property
    def depth(self) -> int:
        return self.num_hidden_layers

    rotary = True  # positions enter every block (RoPE), not once at the embedding


def rope_slots(rope: nn.Module, x: mx.array, offset: int, slots: Optional[str]) -> mx.array:
    """Rotary positions for ``x`` (B, H, L, D) whose first slot is slot ``offset`` of the layer.

    A token stream (``slots`` None) and ``"consecutive"`` slots take positions offset, offset+1,
    ...; with ``"shared"`` the stream is [token, concept] pairs and both slots of pair t take
    position offset/2 + t (the pairs are rotated as two sub-sequences of T positions each).
    """
    if slots != "shared":
        return rope(x, offset=offset)
    B, H, L, D = x.shape
    pairs = x.reshape(B, H, L // 2, 2, D).swapaxes(2, 3)  # (B, H, 2, T, D)
    return rope(pairs, offset=offset // 2).swapaxes(2, 3).reshape(B, H, L, D)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        d, hd = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = hd ** -0.5
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)
        if args.qk_norm:
            self.q_norm = nn.RMSNorm(hd, eps=args.rms_norm_eps)
            self.k_norm = nn.RMSNorm(hd, eps=args.rms_norm_eps)
        self.qk_norm = args.qk_norm
        self.rope = nn.RoPE(hd, traditional=False, base=args.rope_theta)

    def __call__(self, x: mx.array, mask: Any = "causal", cache: Any = None,
                 rows: Optional[slice] = None, slots: Optional[str] = None) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        offset = cache.offset if cache is not None else 0
        q = rope_slots(self.rope, q.transpose(0, 2, 1, 3), offset, slots)
        k = rope_slots(self.rope, k.transpose(0, 2, 1, 3), offset, slots)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        q, mask = select_rows(q, mask, rows, k.shape[2])
        out = ops.attention(q, k, v, self.scale, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, q.shape[2], -1))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Any = "causal", cache: Any = None,
                 rows: Optional[slice] = None, slots: Optional[str] = None) -> mx.array:
        """The block over ``x``; with ``rows``, its output at those positions only."""
        h = self.self_attn(self.input_layernorm(x), mask, cache, rows, slots)
        h = (x if rows is None else x[:, rows]) + h
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [Block(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)


class Model(LM):
    """Llama-family language model; the head is tied to ``embed_tokens`` or is ``lm_head``."""

    NORMS = ("layernorm", "_norm.", "model.norm.")
    RESIDUAL_OUT = ("self_attn.o_proj.weight", "mlp.down_proj.weight")

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.model = LlamaModel(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.width, self.depth = args.hidden_size, args.num_hidden_layers
        self.context = args.max_position_embeddings

    @property
    def layers(self):
        return self.model.layers

    def embed(self, inputs: mx.array, offset: int = 0) -> mx.array:
        return self.model.embed_tokens(inputs)  # positions enter the blocks through RoPE

    def norm(self, h: mx.array) -> mx.array:
        return self.model.norm(h)

    def logits(self, h: mx.array) -> mx.array:
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop Hugging Face's precomputed rotary frequencies and a tied head's copy."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights

    def hf_config(self) -> dict[str, Any]:
        a = self.args
        qwen3 = a.qk_norm
        return {
            "model_type": "qwen3" if qwen3 else "llama",
            "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
            "vocab_size": a.vocab_size, "hidden_size": a.hidden_size,
            "num_hidden_layers": a.num_hidden_layers,
            "num_attention_heads": a.num_attention_heads,
            "num_key_value_heads": a.num_key_value_heads,
            "intermediate_size": a.intermediate_size, "head_dim": a.head_dim,
            "max_position_embeddings": a.max_position_embeddings, "rope_theta": a.rope_theta,
            "rms_norm_eps": a.rms_norm_eps, "tie_word_embeddings": a.tie_word_embeddings,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0,
        }
