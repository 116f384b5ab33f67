"""CoCoMix language model over any student family (``models/base.py``): the family's blocks plus
a concept head whose compressed continuous concept is interleaved with the token hidden states
(docs/semantics.md), and the paper's pause baseline. The concept path is written once here;
:func:`model_class` and :func:`args_class` put it over a family's ``Model`` and ``ModelArgs``.

Before block ``insert_layer`` (0-based), for the residual ``h`` (B, T, d):

1. ``x, mu, std = standardize(h)``; concept logits ``z = concept_predictor(x - pre_bias)``.
2. ``z_k`` keeps the top-``concept_num`` raw logits per position and zeros the rest.
3. continuous concept ``c = (compress_layer(z_k) + pre_bias) * std + mu``.
4. interleave ``[h_1, c_1, h_2, c_2, ...]`` and run the remaining blocks over 2T slots.
5. next-token logits come from the concept slots: final norm → LM head.

Ablations: ``mixing="add"`` adds ``c`` to ``h`` instead of interleaving; ``mixing="none"``
predicts concepts without mixing them in. ``pause=True`` interleaves one learned vector instead
of a concept (no concept head). ``positions`` says where a RoPE family places the slots of the
interleaved stream (``base.SLOT_POSITIONS``); learned positions (GPT-2) give a concept slot none.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from ..ops import SMALL, standardize, topk_indices
from .base import SLOT_POSITIONS, LM, cache_offset

MIXINGS = ("interleave", "add", "none")


@dataclass
class Steering:
    """Multiply concept logits ``index`` by ``alpha`` at token positions ``start <= t < end``."""

    index: mx.array  # (n,) int
    alpha: mx.array  # (n,) float
    start: int = 0
    end: int = 2**31 - 1


CONCEPT_FIELDS = ("concept_dim", "concept_num", "insert_layer", "mixing", "pause", "positions")


@functools.cache
def args_class(base: type) -> type:
    """The ``ModelArgs`` of a CoCoMix model over the family whose arguments are ``base``: its
    fields plus the concept architecture (:data:`CONCEPT_FIELDS`), kept in ``config.json`` as a
    ``cocomix`` block."""

    @dataclass
    class ModelArgs(base):
        concept_dim: int = 32768
        concept_num: int = 32
        insert_layer: int = 5
        mixing: str = "interleave"
        pause: bool = False
        positions: str = "shared"

        def __post_init__(self):
            super().__post_init__()
            if not 0 <= self.insert_layer < self.depth:
                raise ValueError(f"concept.insert_layer={self.insert_layer} must be in "
                                 f"0..{self.depth - 1}")
            if self.mixing not in MIXINGS:
                raise ValueError(f"concept.mixing must be one of {', '.join(MIXINGS)}, not "
                                 f"{self.mixing!r}")
            if self.positions not in SLOT_POSITIONS:
                raise ValueError(f"concept.positions must be one of {', '.join(SLOT_POSITIONS)}, not "
                                 f"{self.positions!r}")
            if not self.rotary and self.positions != "shared":
                raise ValueError("concept.positions is for RoPE students; a concept slot of "
                                 "learned positions (GPT-2) has no position of its own (keep "
                                 "the default)")
            if not self.pause and not 0 < self.concept_num <= self.concept_dim:
                raise ValueError(f"concept.concept_num={self.concept_num} must be in "
                                 f"1..{self.concept_dim}")

        @classmethod
        def from_dict(cls, params: dict[str, Any]) -> "ModelArgs":
            """Accept a checkpoint ``config.json``: the family's fields plus a ``cocomix``
            block."""
            return super().from_dict({**params, **(params.get("cocomix") or {})})

        def cocomix_block(self) -> dict[str, Any]:
            return {name: getattr(self, name) for name in CONCEPT_FIELDS}

    ModelArgs.__qualname__ = ModelArgs.__name__ = f"CoCoMix{base.__module__.rsplit('.', 1)[-1]}Args"
    return ModelArgs


@functools.cache
def model_class(base: type) -> type:
    """The CoCoMix model over the family whose ``Model`` is ``base``."""
    name = f"CoCoMix{base.__module__.rsplit('.', 1)[-1]}"
    return type(name, (Model, base), {"__module__": __name__})


def interleave(h: mx.array, c: mx.array) -> mx.array:
    """``[h_1, c_1, h_2, c_2, ...]``: (B, T, d) × 2 → (B, 2T, d)."""
    B, T, d = h.shape
    return mx.stack([h, mx.broadcast_to(c, h.shape)], axis=2).reshape(B, 2 * T, d)


def concept_slots(h: mx.array) -> mx.array:
    """The odd slots 1, 3, 5, ... of an interleaved (B, 2T, d) sequence."""
    B, T2, d = h.shape
    return h.reshape(B, T2 // 2, 2, d)[:, :, 1]


class Model(LM):
    """The concept path, mixed into a family's ``Model`` by :func:`model_class`."""

    def __init__(self, args):
        super().__init__(args)
        d = self.width
        if args.pause:
            self.pause = mx.zeros((d,))
        else:
            self.pre_bias = mx.zeros((d,))
            self.concept_predictor = nn.Linear(d, args.concept_dim)
            self.compress_layer = nn.Linear(args.concept_dim, d)

    @property
    def interleaves(self) -> bool:
        return self.args.pause or self.args.mixing == "interleave"

    # ---- docs/semantics.md, steps 1-3 ----------------------------------------------------------------
    def predict_concepts(self, h: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Step 1: concept logits ``z`` (B, T, C) of the residual ``h``, with ``mu`` and ``std``."""
        x, mu, std = standardize(h)
        return self.concept_predictor(x - self.pre_bias), mu, std

    def select_concepts(self, z: mx.array, positions: Optional[mx.array] = None,
                        steering: Optional[Steering] = None) -> tuple[mx.array, mx.array]:
        """Step 2: the top-k raw concept logits, as ``(index, values)`` (..., k); the rest are 0.

        With ``steering``, the chosen concepts' logits are multiplied by their factors at the
        steered ``positions``, and a boosted concept (factor > 0) is forced into the top-k
        there. The gradient reaches exactly the kept entries.
        """
        k = self.args.concept_num
        if steering is None:
            idx = topk_indices(z, k)
            return idx, mx.take_along_axis(z, idx, -1)
        st = steering
        C = z.shape[-1]
        scale = mx.ones((C,), z.dtype).at[st.index].multiply(st.alpha.astype(z.dtype))
        force = mx.zeros((C,), z.dtype).at[st.index].add(
            mx.where(st.alpha > 0, mx.inf, 0).astype(z.dtype))
        if positions is None:
            positions = mx.arange(z.shape[-2])
        active = ((positions >= st.start) & (positions < st.end))[:, None]
        z = mx.where(active, z * scale, z)
        idx = topk_indices(mx.where(active, z + force, z), k)
        return idx, mx.take_along_axis(z, idx, -1)

    def compress(self, index: mx.array, values: mx.array, mu: mx.array,
                 std: mx.array) -> mx.array:
        """Step 3: the continuous concept of the kept logits ``z_k`` (``values`` at ``index``,
        zero elsewhere), de-standardized into the residual's scale.

        ``compress_layer(z_k)``; for a few positions (decoding) as the sum of the k kept columns
        of its weight, which reads k of its C columns instead of all of them (same sum).
        """
        layer = self.compress_layer
        if index.size <= SMALL and not isinstance(layer, nn.QuantizedLinear):
            columns = layer.weight.T[index]  # (..., k, d)
            c = (values[..., None, :] @ columns)[..., 0, :] + layer.bias
        else:
            zeros = mx.zeros((*values.shape[:-1], self.args.concept_dim), values.dtype)
            c = layer(mx.put_along_axis(zeros, index, values, -1))
        return (c + self.pre_bias) * std + mu

    # ---- forward ------------------------------------------------------------------------------
    def token_offset(self, cache) -> int:
        """Position of the next token given the cache (slots count twice when block 0 already
        runs over interleaved slots)."""
        offset = cache_offset(cache)
        return offset // 2 if self.interleaves and self.args.insert_layer == 0 else offset

    def mix(self, h: mx.array, offset: int = 0,
            steering: Optional[Steering] = None) -> tuple[mx.array, Optional[mx.array]]:
        """Steps 1-4 at the insertion point: the stream the blocks from ``insert_layer`` on run
        over (interleaved (B, 2T, d), or (B, T, d) for ``add`` / ``none``), and the concept
        logits ``z`` (None for pause). ``offset`` is the first token's position."""
        if self.args.pause:
            c, z = self.pause.astype(h.dtype), None
        elif steering is None and h.shape[1] == 1 and self._plain_layers():
            c, z = self.decode_steps(h)
        else:
            c, z = self.concept_steps(h, offset, steering)
        if self.interleaves:
            return interleave(h, c), z
        return (h + c if self.args.mixing == "add" else h), z

    def concept_steps(self, h: mx.array, offset: int = 0,
                      steering: Optional[Steering] = None) -> tuple[mx.array, mx.array]:
        """Steps 1-3: the continuous concept ``c`` and the concept logits ``z`` of ``h``, whose
        first position is token ``offset``."""
        z, mu, std = self.predict_concepts(h)
        positions = mx.arange(offset, offset + h.shape[1])
        return self.compress(*self.select_concepts(z, positions, steering), mu, std), z

    def decode_steps(self, h: mx.array) -> tuple[mx.array, mx.array]:
        """:meth:`concept_steps` for one position per row and no steering, as decoding runs
        them: compiled into one graph (a decoded token builds one node here instead of some
        thirty), with the model's parameters as its implicit inputs."""
        compiled = self.__dict__.get("_decode_steps")
        if compiled is None:
            compiled = mx.compile(lambda x: self.concept_steps(x), inputs=self.state)
            object.__setattr__(self, "_decode_steps", compiled)
        return compiled(h)

    def _plain_layers(self) -> bool:
        return not isinstance(self.concept_predictor, nn.QuantizedLinear) and \
            not isinstance(self.compress_layer, nn.QuantizedLinear)

    @property
    def slots(self) -> Optional[str]:
        """How the blocks after the insertion point place their stream (``base.LM.run_blocks``)."""
        return self.args.positions if self.interleaves else None

    def readout(self, h: mx.array) -> mx.array:
        """Step 5: the final hidden states of the stream after the last block (its concept slots
        when interleaved), through the final norm."""
        return self.norm(concept_slots(h) if self.interleaves else h)

    def finish(self, h: mx.array, start: int, cache=None) -> mx.array:
        """Blocks ``start`` .. the last over the mixed stream ``h``, then step 5. When
        interleaved, the last block computes only the concept slots the readout reads (the
        token slots' keys and values still enter its cache): the same numbers, for half of
        that block's queries and MLP rows."""
        n = self.depth
        if start >= n or not self.interleaves:
            return self.readout(self.run_blocks(h, start, n, cache, self.slots))
        return self.norm(self.run_blocks(h, start, n, cache, self.slots, rows=slice(1, None, 2)))

    def __call__(self, inputs: mx.array, cache=None, return_concepts: bool = False,
                 steering: Optional[Steering] = None, head: bool = True):
        """Next-token logits (B, T, V) read at the concept slots, and the concept logits ``z``
        (B, T, C) when ``return_concepts`` (None for pause). ``head=False``: the final hidden
        states after the final norm in place of the logits."""
        insert = self.args.insert_layer
        offset = self.token_offset(cache)
        h = self.run_blocks(self.embed(inputs, offset), 0, insert, cache)
        h, z = self.mix(h, offset, steering)
        h = self.finish(h, insert, cache)
        out = self.logits(h) if head else h
        return (out, z) if return_concepts else out
