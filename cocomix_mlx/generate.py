"""Text generation with a KV cache, for NTP, CoCoMix and converted checkpoints, with concept
steering (paper §3.2): the predicted logit of a chosen concept is multiplied by a factor in
[-10, 10] before the TopK, and a boosted concept is forced into the TopK.

Sampling and logits processing are mlx-lm's (``make_sampler``, ``make_logits_processors``,
``stream_generate``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import mlx.core as mx
import mlx.nn as nn

from .errors import ConfigError

SPANS = ("all", "prompt", "generated")
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


def _resolve(steer: dict, C: int, names: Optional[dict[str, int]] = None):
    index, alpha = [], []
    for key, value in steer.items():
        if isinstance(key, str) and not key.lstrip("-").isdigit():
            if not names or key not in names:
                raise ConfigError(f"unknown concept name {key!r}; use an index in 0..{C - 1} or "
                                  "a name from the concept dictionary")
            key = names[key]
        i = int(key)
        if not 0 <= i < C:
            raise ConfigError(f"concept index {i} is out of range 0..{C - 1}")
        if not -MAX_ALPHA <= float(value) <= MAX_ALPHA:
            raise ConfigError(f"steering factor {value} is outside [-10, 10]")
        index.append(i)
        alpha.append(float(value))
    return mx.array(index, dtype=mx.int32), mx.array(alpha, dtype=mx.float32)


def resolve_steer(model: nn.Module, steer: dict, names: Optional[dict[str, int]] = None):
    """Concept indices and factors for ``steer`` ({index or name: alpha}), validated."""
    if not hasattr(model, "concept_predictor"):
        raise ConfigError("steering needs a CoCoMix model with a concept head, or a plain model "
                          "with --sae and --layer")
    return _resolve(steer, model.args.concept_dim, names)


@contextmanager
def steering(model: nn.Module, steer: Optional[dict], prompt_len: int, span: str = "all",
             names: Optional[dict[str, int]] = None):
    """Steer ``model`` inside the ``with`` block over ``span`` of the token positions."""
    if not steer:
        yield
        return
    from .models.cocomix import Steering

    if span not in SPANS:
        raise ConfigError(f"--span must be one of {', '.join(SPANS)}, not {span!r}")
    index, alpha = resolve_steer(model, steer, names)
    start = prompt_len if span == "generated" else 0
    end = prompt_len if span == "prompt" else 2**31 - 1
    model.steering = Steering(index, alpha, start, end)
    try:
        yield
    finally:
        model.steering = None


class SAESteeredBlock(nn.Module):
    """A teacher block whose output residual ``h`` has SAE latents ``index`` scaled by ``alpha``:
    ``h + Σ (alpha_j - 1) · z_j · std · W_dec[:, j]`` (the SAE decoder is linear, so this equals
    swapping the latent for its scaled value, without the SAE's reconstruction error)."""

    def __init__(self, block: nn.Module, sae, index: mx.array, alpha: mx.array, start: int,
                 end: int):
        super().__init__()
        self.block, self.sae = block, sae
        self.index, self.alpha, self.start, self.end = index, alpha, start, end

    def __getattr__(self, name):  # the model may read the block's own attributes (use_sliding)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "block" in self:
                return getattr(self["block"], name)
            raise

    def __call__(self, x, *args, **kwargs):
        cache = kwargs.get("cache", args[1] if len(args) > 1 else None)
        offset = cache.offset if cache is not None else 0
        h = self.block(x, *args, **kwargs)
        z, stats = self.sae.encode(h, return_stats=True)
        std = stats[1] if stats is not None else 1.0
        picked = mx.take(z, self.index, axis=-1) * (self.alpha - 1)  # (B, T, n)
        delta = (picked @ mx.take(self.sae.W_dec, self.index, axis=1).T) * std
        positions = mx.arange(offset, offset + h.shape[1])
        active = ((positions >= self.start) & (positions < self.end))[:, None]
        return h + mx.where(active, delta, 0).astype(h.dtype)


def _blocks(model: nn.Module) -> list:
    inner = model.model
    return inner.h if hasattr(inner, "h") else inner.layers


@contextmanager
def sae_steering(model: nn.Module, sae, layer: int, steer: Optional[dict], prompt_len: int,
                 span: str = "all", names: Optional[dict[str, int]] = None):
    """Steer a plain model by scaling SAE latents at the output of block ``layer``."""
    if not steer:
        yield
        return
    from .concepts import check_sae, teacher_depth

    check_sae(model, sae)
    if not 0 <= layer < teacher_depth(model):
        raise ConfigError(f"--layer {layer} is out of range for a model with "
                          f"{teacher_depth(model)} blocks")
    if span not in SPANS:
        raise ConfigError(f"--span must be one of {', '.join(SPANS)}, not {span!r}")
    index, alpha = _resolve(steer, sae.cfg.latents, names)
    blocks = _blocks(model)
    original = blocks[layer]
    start = prompt_len if span == "generated" else 0
    end = prompt_len if span == "prompt" else 2**31 - 1
    blocks[layer] = SAESteeredBlock(original, sae, index, alpha, start, end)
    try:
        yield
    finally:
        blocks[layer] = original


def stream(model: nn.Module, tokenizer, prompt: str | list[int], max_tokens: int = 256,
           temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0,
           repetition_penalty: Optional[float] = None, seed: Optional[int] = None,
           steer: Optional[dict] = None, span: str = "all",
           names: Optional[dict[str, int]] = None, sae=None, layer: Optional[int] = None) -> Iterator:
    """mlx-lm ``GenerationResponse`` objects, one per generated token.

    With ``sae`` and ``layer``, ``steer`` scales SAE latents in a plain model's residual stream
    instead of a CoCoMix model's predicted concepts.
    """
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    if max_tokens <= 0:
        raise ConfigError("--max-tokens must be positive")
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise ConfigError("the prompt is empty; give some text")
    if seed is not None:
        mx.random.seed(seed)
    sampler = make_sampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k)
    processors = make_logits_processors(repetition_penalty=repetition_penalty)
    model.eval()
    if sae is not None:
        if layer is None:
            layer = sae.cfg.layer
        if layer is None:
            raise ConfigError("give --layer: the block whose output the SAE reads")
        context = sae_steering(model, sae, layer, steer, len(ids), span, names)
    else:
        context = steering(model, steer, len(ids), span, names)
    with context:
        yield from stream_generate(model, tokenizer, mx.array(ids), max_tokens=max_tokens,
                                   sampler=sampler, logits_processors=processors)


def generate(model: nn.Module, tokenizer, prompt: str | list[int], **kwargs) -> str:
    """The generated continuation of ``prompt`` as text (see :func:`stream` for options)."""
    return "".join(r.text for r in stream(model, tokenizer, prompt, **kwargs))


def generate_tokens(model: nn.Module, tokenizer, prompt, **kwargs) -> list[int]:
    """The generated token ids (see :func:`stream`)."""
    return [int(r.token) for r in stream(model, tokenizer, prompt, **kwargs)]


def predicted_concepts(model: nn.Module, tokenizer, text: str, top: int = 5,
                       labels: Optional[dict[int, str]] = None) -> list[dict]:
    """Per token of ``text``: the ``top`` concepts the model predicts there, with their logits
    and dictionary labels (when ``labels`` maps indices to names)."""
    if not hasattr(model, "concept_predictor"):
        raise ConfigError("concept inspection needs a CoCoMix model with a concept head")
    ids = tokenizer.encode(text)
    if not ids:
        raise ConfigError("the text is empty")
    model.eval()
    _, z = model(mx.array([ids]), return_concepts=True)
    top = min(top, z.shape[-1])
    order = mx.argsort(-z[0], axis=-1)[:, :top]
    values = mx.take_along_axis(z[0], order, -1)
    rows = []
    for t, (idx_row, val_row) in enumerate(zip(order.tolist(), values.tolist())):
        rows.append({"position": t, "token": tokenizer.decode([ids[t]]),
                     "concepts": [{"index": i, "logit": v, "label": (labels or {}).get(i)}
                                  for i, v in zip(idx_row, val_row)]})
    return rows
