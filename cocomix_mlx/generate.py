"""Text generation with a KV cache, for NTP, CoCoMix and converted checkpoints, with concept
steering (paper §3.2): the predicted logit of a chosen concept is multiplied by a factor in
[-10, 10] before the TopK, and a boosted concept is forced into the TopK.

Sampling and logits processing are mlx-lm's (``make_sampler``, ``make_logits_processors``,
``stream_generate``).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterator, Optional

import mlx.core as mx
import mlx.nn as nn

from .errors import ConfigError, ContextOverflow, UnknownConcept
from .models.backbone import backbone

SPANS = ("all", "prompt", "generated")
MAX_TOKENS = 256  # generated tokens by default, when the context has room for them
MAX_ALPHA = 10.0


def parse_steer(items: list[str]) -> dict[str, float]:
    """``["12=4", "whale=-2"]`` → ``{"12": 4.0, "whale": -2.0}``."""
    out = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            key = ""
        if not sep or not key.strip():
            raise ConfigError(f"--steer expects CONCEPT=ALPHA (e.g. 123=4), not {item!r}")
    return out


def resolve_concepts(steer: dict, C: int, names: Optional[dict[str, int]] = None):
    """Indices in 0..C-1 and factors for ``steer`` ({index or name: alpha}), validated."""
    index, alpha = [], []
    for key, value in steer.items():
        if isinstance(key, str) and not key.lstrip("-").isdigit():
            if not names or key not in names:
                raise UnknownConcept(f"unknown concept name {key!r}; use an index in 0..{C - 1} or "
                                  "a name from the concept dictionary")
            key = names[key]
        i = int(key)
        if not 0 <= i < C:
            raise UnknownConcept(f"concept index {i} is out of range 0..{C - 1}")
        if not -MAX_ALPHA <= float(value) <= MAX_ALPHA:
            raise ConfigError(f"steering factor {value} is outside [-10, 10]")
        index.append(i)
        alpha.append(float(value))
    return mx.array(index, dtype=mx.int32), mx.array(alpha, dtype=mx.float32)


def resolve_steer(model: nn.Module, steer: dict, names: Optional[dict[str, int]] = None):
    """Concept indices and factors for ``steer`` ({index or name: alpha}), validated."""
    if not backbone(model).has_concepts:
        raise ConfigError("steering needs a CoCoMix model with a concept head, or a plain model "
                          "with --sae and --layer")
    return resolve_concepts(steer, model.args.concept_dim, names)


def _span(span: str, prompt_len: int) -> tuple[int, int]:
    if span not in SPANS:
        raise ConfigError(f"--span must be one of {', '.join(SPANS)}, not {span!r}")
    return (prompt_len if span == "generated" else 0,
            prompt_len if span == "prompt" else 2**31 - 1)


class Steered(nn.Module):
    """A model steered by a wrapper: the wrapped model is read, never changed. Called like an
    mlx-lm model (``model(inputs, cache=cache)``), with the wrapped model's cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    @property
    def layers(self):
        return backbone(self.inner).blocks

    def make_cache(self):
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.inner)


class ConceptSteered(Steered):
    """A CoCoMix model whose predicted concept logits are scaled before the TopK (paper §3.2)."""

    def __init__(self, model: nn.Module, steering):
        super().__init__(model)
        self.steering = steering

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        return self.inner(inputs, cache, steering=self.steering)


class SAESteered(Steered):
    """A model whose residual after block ``layer`` has SAE latents ``index`` scaled by ``alpha``
    at positions ``start <= t < end``: ``h + Σ (alpha_j - 1) · z_j · std · W_dec[:, j]`` (the
    decoder is linear, so this equals swapping each latent for its scaled value, without the
    SAE's reconstruction error)."""

    def __init__(self, model: nn.Module, sae, layer: int, index: mx.array, alpha: mx.array,
                 start: int, end: int):
        super().__init__(model)
        self.sae, self.layer, self.bb = sae, layer, backbone(model)
        self.index, self.alpha, self.start, self.end = index, alpha, start, end

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        bb = self.bb
        offset = bb.offset(cache)
        h = bb.lower(inputs, self.layer, cache)
        z, stats = self.sae.encode(h, return_stats=True)
        std = stats[1] if stats is not None else 1.0
        picked = mx.take(z, self.index, axis=-1) * (self.alpha - 1)  # (B, T, n)
        delta = (picked @ mx.take(self.sae.W_dec, self.index, axis=1).T) * std
        positions = mx.arange(offset, offset + h.shape[1])
        active = ((positions >= self.start) & (positions < self.end))[:, None]
        h = h + mx.where(active, delta, 0).astype(h.dtype)
        return bb.head(bb.upper(h, self.layer, cache, offset))


def sae_layer(model: nn.Module, sae, layer: Optional[int]) -> int:
    """The block whose output ``sae`` reads in ``model`` (default: the SAE's own), checked: the
    widths agree and the block's output holds one row per token."""
    from .concepts import check_sae

    layer = sae.cfg.layer if layer is None else layer
    if layer is None:
        raise ConfigError("give --layer: the block whose output the SAE reads")
    check_sae(model, sae)
    bb = backbone(model)
    bb.check_layer(layer)
    if not bb.token_stream(layer):
        raise ConfigError(f"block {layer} of this CoCoMix model runs over interleaved concept "
                          f"slots; use an SAE on a block before {bb.insert}")
    return layer


def steered(model: nn.Module, steer: Optional[dict], prompt_len: int, span: str = "all",
            names: Optional[dict[str, int]] = None, sae=None,
            layer: Optional[int] = None) -> nn.Module:
    """``model`` steered by ``steer`` ({concept index or name: alpha}) over ``span`` of the token
    positions: its predicted concepts (a CoCoMix model), or with ``sae`` the SAE's latents at the
    output of block ``layer`` (default: the SAE's own). Without ``steer``, ``model`` itself."""
    if not steer:
        return model
    start, end = _span(span, prompt_len)
    if sae is None:
        from .models.cocomix import Steering

        return ConceptSteered(model, Steering(*resolve_steer(model, steer, names), start, end))
    layer = sae_layer(model, sae, layer)
    return SAESteered(model, sae, layer, *resolve_concepts(steer, sae.cfg.latents, names), start, end)


def check_sampling(temp: float, top_p: float, min_p: float, top_k: int,
                   repetition_penalty: Optional[float]) -> None:
    """Refuse sampling settings mlx-lm's sampler would misread (0 turns a filter off)."""
    for name, value, ok in (("--temp", temp, temp >= 0), ("--top-p", top_p, 0 <= top_p <= 1),
                            ("--min-p", min_p, 0 <= min_p <= 1), ("--top-k", top_k, top_k >= 0),
                            ("--repetition-penalty", repetition_penalty,
                             repetition_penalty is None or repetition_penalty > 0)):
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{name} {value} is out of range (temp >= 0, top-p and min-p in "
                              "[0, 1], top-k >= 0, repetition penalty > 0)")


def fit_context(model: nn.Module, prompt_len: int, max_tokens: Optional[int]) -> int:
    """The number of tokens to generate: ``max_tokens``, or by default the smaller of
    :data:`MAX_TOKENS` and what fits; the prompt and the generated tokens must fit in the
    model's context (positions past it have no meaning), else a one-line error says what fits."""
    context = backbone(model).context
    room = context - prompt_len
    if room < 1:
        raise ContextOverflow(f"the prompt has {prompt_len} tokens but the model's context holds "
                          f"{context}; shorten the prompt")
    if max_tokens is None:
        return min(MAX_TOKENS, room)
    if max_tokens <= 0:
        raise ConfigError("--max-tokens must be positive")
    if max_tokens > room:
        raise ConfigError(f"--max-tokens {max_tokens} runs past the model's context ({context} "
                          f"positions, prompt {prompt_len} tokens); give {room} or fewer")
    return max_tokens


def stream(model: nn.Module, tokenizer, prompt: str | list[int],
           max_tokens: Optional[int] = None,
           temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0,
           repetition_penalty: Optional[float] = None, seed: Optional[int] = None,
           steer: Optional[dict] = None, span: str = "all",
           names: Optional[dict[str, int]] = None, sae=None, layer: Optional[int] = None,
           processors: Optional[dict] = None) -> Iterator:
    """mlx-lm ``GenerationResponse`` objects, one per generated token.

    With ``sae`` and ``layer``, ``steer`` scales SAE latents in a plain model's residual stream
    instead of a CoCoMix model's predicted concepts. ``processors`` are further arguments of
    mlx-lm's ``make_logits_processors`` (``presence_penalty``, ``logit_bias``, ...).
    """
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    check_sampling(temp, top_p, min_p, top_k, repetition_penalty)
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise ConfigError("the prompt is empty; give some text")
    vocab = backbone(model).vocab
    if not all(isinstance(i, numbers.Integral) and 0 <= i < vocab for i in ids):
        raise ConfigError(f"prompt token ids must be integers in 0..{vocab - 1}")
    for token, bias in ((processors or {}).get("logit_bias") or {}).items():
        if not (isinstance(token, numbers.Integral) and 0 <= token < vocab
                and math.isfinite(bias)):  # an id past the vocabulary would write out of bounds
            raise ConfigError(f"logit_bias needs token ids in 0..{vocab - 1} and finite biases, "
                              f"not {token}: {bias}")
    max_tokens = fit_context(model, len(ids), max_tokens)
    if top_k >= vocab:
        raise ConfigError(f"top-k {top_k} must be below the vocabulary size {vocab} (0: off)")
    if seed is not None and not 0 <= seed < 2**64:
        raise ConfigError(f"seed {seed} must be in 0..2^64-1")
    if seed is not None:
        mx.random.seed(seed)
    sampler = make_sampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k)
    processors = make_logits_processors(repetition_penalty=repetition_penalty,
                                        **{k: v for k, v in (processors or {}).items() if v})
    model.eval()
    model = steered(model, steer, len(ids), span, names, sae, layer)
    yield from stream_generate(model, tokenizer, mx.array(ids), max_tokens=max_tokens,
                               sampler=sampler, logits_processors=processors)


def generate(model: nn.Module, tokenizer, prompt: str | list[int], **kwargs) -> str:
    """The generated continuation of ``prompt`` as text (see :func:`stream` for options)."""
    return "".join(r.text for r in stream(model, tokenizer, prompt, **kwargs))


def generate_tokens(model: nn.Module, tokenizer, prompt, **kwargs) -> list[int]:
    """The generated token ids (see :func:`stream`)."""
    return [int(r.token) for r in stream(model, tokenizer, prompt, **kwargs)]


def _text_ids(model: nn.Module, tokenizer, text: str, top: int) -> list[int]:
    if top < 1:
        raise ConfigError(f"--top must be at least 1, not {top}")
    ids = tokenizer.encode(text)
    if not ids:
        raise ConfigError("the text is empty")
    context = backbone(model).context
    if len(ids) > context:
        raise ContextOverflow(f"the text has {len(ids)} tokens but the model's context holds "
                              f"{context}; give a shorter text")
    return ids


def _token_rows(tokenizer, ids: list[int], scores: mx.array, top: int, key: str,
                labels: Optional[dict[int, str]], keep=lambda value: True) -> list[dict]:
    """Per position: the ``top`` largest of ``scores`` (T, C) as ``{"index", key, "label"}``."""
    top = min(top, scores.shape[-1])
    order = mx.argsort(-scores, axis=-1)[:, :top]
    values = mx.take_along_axis(scores, order, -1)
    return [{"position": t, "token": tokenizer.decode([ids[t]]),
             "concepts": [{"index": i, key: v, "label": (labels or {}).get(i)}
                          for i, v in zip(idx_row, val_row) if keep(v)]}
            for t, (idx_row, val_row) in enumerate(zip(order.tolist(), values.tolist()))]


def predicted_concepts(model: nn.Module, tokenizer, text: str, top: int = 5,
                       labels: Optional[dict[int, str]] = None) -> list[dict]:
    """Per token of ``text``: the ``top`` concepts the model predicts there, with their logits
    and dictionary labels (when ``labels`` maps indices to names)."""
    if not backbone(model).has_concepts:
        raise ConfigError("concept inspection needs a CoCoMix model with a concept head, or a "
                          "plain model with --sae and --layer")
    ids = _text_ids(model, tokenizer, text, top)
    model.eval()
    _, z = model(mx.array([ids]), return_concepts=True)
    return _token_rows(tokenizer, ids, z[0], top, "logit", labels)


def sae_latents(model: nn.Module, tokenizer, sae, text: str, top: int = 5,
                labels: Optional[dict[int, str]] = None, layer: Optional[int] = None) -> list[dict]:
    """Per token of ``text``: the ``top`` largest active latents (post-TopK, so at most the
    SAE's k) of ``sae`` on the residual after block ``layer`` (default: the SAE's own), with
    their activations and labels."""
    layer = sae_layer(model, sae, layer)
    bb = backbone(model)
    ids = _text_ids(model, tokenizer, text, top)
    model.eval()
    z = sae.encode(bb.residual(mx.array([ids]), layer))[0].astype(mx.float32)
    return _token_rows(tokenizer, ids, z, top, "activation", labels, keep=lambda v: v > 0)
