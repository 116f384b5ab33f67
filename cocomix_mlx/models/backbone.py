"""One interface over every language model the concept machinery reads: our students (GPT-2 and
Llama), our CoCoMix model over either, and mlx-lm's Llama-family models (llama and mistral,
qwen2, qwen3, olmo2).

Attribution labels, SAE training, evaluation and the dictionary, SAE steering, perplexity and
concept inspection all reach a model through :func:`backbone`; none of them looks inside it.
The residual stream "after block ``layer``" is one (B, T, d) vector per token; for a CoCoMix model
past its insertion point, where two slots per token run through the blocks, it is the concept
slot, the one the next token is predicted from (``docs/architecture.md``).
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..errors import ConfigError
from . import cocomix
from .base import LM, cache_offset

Upper = Callable[[mx.array], mx.array]
LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "olmo2")  # mlx-lm modules with the Llama block loop
DEFAULT_CONTEXT = 2048


class Backbone:
    """Embedding, blocks, final norm and head of a causal LM; subclasses fill them in."""

    has_concepts = False  # a concept head whose predictions can be read and steered

    def __init__(self, model: nn.Module):
        self.model = model

    # ---- the pieces -----------------------------------------------------------------------------
    width: int
    depth: int
    context: int
    vocab: int  # token ids the embedding takes

    @property
    def blocks(self) -> list:
        """The model's own list of block modules (an entry may be swapped for a wrapper)."""
        raise NotImplementedError

    def embed(self, tokens: mx.array, offset: int = 0) -> mx.array:
        raise NotImplementedError

    def run(self, h: mx.array, start: int, stop: int, cache=None) -> mx.array:
        """Blocks ``start..stop-1`` over ``h``; ``cache`` is the model's full per-block list."""
        raise NotImplementedError

    def norm(self, h: mx.array) -> mx.array:
        raise NotImplementedError

    def head(self, h: mx.array) -> mx.array:
        raise NotImplementedError

    # ---- built from them ------------------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.depth:
            raise ConfigError(f"layer {layer} is out of range for a model with {self.depth} "
                              f"blocks (0..{self.depth - 1})")
        return layer

    def hidden(self, tokens: mx.array) -> mx.array:
        """Final normalized hidden states (B, T, d) of ``tokens``."""
        return self.norm(self.run(self.embed(tokens), 0, self.depth))

    def residual(self, tokens: mx.array, layer: int) -> mx.array:
        """The residual stream (B, T, d) after block ``layer``."""
        return self.split(tokens, layer)[0]

    def offset(self, cache) -> int:
        """Position of the next token, given the model's cache (None: 0)."""
        return 0

    def lower(self, tokens: mx.array, layer: int, cache=None) -> mx.array:
        """The stream after block ``layer`` (the cache, if any, grows by these tokens)."""
        return self.run(self.embed(tokens, self.offset(cache)), 0, layer + 1, cache)

    def upper(self, h: mx.array, layer: int, cache=None, offset: int = 0) -> mx.array:
        """The final normalized hidden states from the stream ``h`` after block ``layer``;
        ``offset`` is the position of ``h``'s first token."""
        return self.norm(self.run(h, layer + 1, self.depth, cache))

    def split(self, tokens: mx.array, layer: int) -> tuple[mx.array, Upper]:
        """The residual after block ``layer`` and the rest of the forward: a function from a
        replacement of that residual to the final normalized hidden states."""
        self.check_layer(layer)
        return self.lower(tokens, layer), lambda x: self.upper(x, layer)

    def token_stream(self, layer: int) -> bool:
        """Whether block ``layer``'s output holds one slot per token (so a block wrapper may
        steer it); only a CoCoMix model's interleaved blocks do not."""
        return True


class StudentBackbone(Backbone):
    """Our student families (``models/base.py``): GPT-2 and Llama."""

    def __init__(self, model: LM):
        super().__init__(model)
        self.width, self.depth, self.context = model.width, model.depth, model.context
        self.vocab = model.args.vocab_size

    @property
    def blocks(self) -> list:
        return self.model.layers

    def embed(self, tokens, offset=0):
        return self.model.embed(tokens, offset)

    def offset(self, cache):
        return cache_offset(cache)

    def run(self, h, start, stop, cache=None):
        return self.model.run_blocks(h, start, stop, cache)

    def norm(self, h):
        return self.model.norm(h)

    def head(self, h):
        return self.model.logits(h)


class CoCoMixBackbone(StudentBackbone):
    """Blocks below the insertion point are the family's; the concept is mixed in before block
    ``insert_layer``, and the stream after a later block is read at its concept slots."""

    def __init__(self, model: cocomix.Model):
        super().__init__(model)
        self.has_concepts = not model.args.pause
        self.insert = model.args.insert_layer

    def hidden(self, tokens):
        return self.model(tokens, head=False)

    def offset(self, cache):
        return self.model.token_offset(cache)

    def token_stream(self, layer):
        return layer < self.insert or not self.model.interleaves

    def run_mixed(self, h, start, stop, cache=None):
        """Blocks ``start..stop-1`` (all past the insertion point) over the mixed stream."""
        return self.model.run_blocks(h, start, stop, cache, self.model.slots)

    def lower(self, tokens, layer, cache=None):
        m, offset = self.model, self.offset(cache)
        h = self.run(self.embed(tokens, offset), 0, min(layer + 1, self.insert), cache)
        if layer < self.insert:
            return h
        return self.run_mixed(m.mix(h, offset)[0], self.insert, layer + 1, cache)

    def upper(self, h, layer, cache=None, offset=0):
        m = self.model
        if layer < self.insert:
            h = m.mix(self.run(h, layer + 1, self.insert, cache), offset)[0]
            layer = self.insert - 1
        return m.finish(h, layer + 1, cache)

    def split(self, tokens, layer):
        if self.token_stream(self.check_layer(layer)):
            return super().split(tokens, layer)
        s = self.lower(tokens, layer)  # interleaved: the token slots stay as they are
        token_slots = mx.stop_gradient(s.reshape(s.shape[0], -1, 2, s.shape[-1])[:, :, 0])
        return cocomix.concept_slots(s), lambda x: self.model.finish(
            cocomix.interleave(token_slots, x), layer + 1)


class LlamaBackbone(Backbone):
    """mlx-lm's Llama-family models: ``model.embed_tokens``, ``model.layers`` (called as
    ``block(h, mask, cache)``), ``model.norm``, and a head tied to the embedding or ``lm_head``."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        a, self.inner = model.args, model.model
        self.width, self.depth, self.vocab = a.hidden_size, len(self.inner.layers), a.vocab_size
        self.context = getattr(a, "max_position_embeddings", None) or DEFAULT_CONTEXT
        kinds = getattr(a, "layer_types", None) or ["full_attention"] * self.depth
        self.windows = [a.sliding_window if kind == "sliding_attention" else None
                        for kind in kinds]
        self.tied = a.tie_word_embeddings

    @property
    def blocks(self) -> list:
        return self.inner.layers

    def embed(self, tokens, offset=0):  # positions enter through RoPE and the cache offset
        return self.inner.embed_tokens(tokens)

    def run(self, h, start, stop, cache=None):
        from ..compat import attention_mask

        for i in range(start, stop):
            c = cache[i] if cache is not None else None
            h = self.inner.layers[i](h, attention_mask(h, c, self.windows[i]), c)
        return h

    def norm(self, h):
        return self.inner.norm(h)

    def head(self, h):
        return self.inner.embed_tokens.as_linear(h) if self.tied else self.model.lm_head(h)


def backbone(model: nn.Module) -> Backbone:
    """The :class:`Backbone` of ``model``; a one-line error for an architecture it does not cover."""
    if isinstance(model, cocomix.Model):
        return CoCoMixBackbone(model)
    if isinstance(model, LM):
        return StudentBackbone(model)
    module = type(model).__module__
    if module.startswith("mlx_lm.models.") and module.rsplit(".", 1)[1] in LLAMA_FAMILY:
        return LlamaBackbone(model)
    raise ConfigError(f"unsupported model architecture '{module.rsplit('.', 1)[-1]}'; supported: "
                      f"our gpt2 and llama students, CoCoMix over either, and mlx-lm's Llama family ({', '.join(LLAMA_FAMILY)}, mistral)")
