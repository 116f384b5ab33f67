"""Numerical kernels shared by the models and objectives: the one seam between the equations
and the device.

Models call :func:`gelu` and :func:`attention`; objectives call :func:`lm_cross_entropy` (or
:func:`cross_entropy` for logits they already hold). Each kernel is the exact function its name
says, written in the form that runs fastest on MLX, and has beside it a one-line ``*_textbook``
form it must equal (``tests/test_ops.py`` checks every pair, values and gradients, on every
device MLX has here). On a CPU
device, MLX evaluates elementwise transcendentals one scalar at a time, so the forms here compute
one ``exp`` where the textbook form needs two, build that ``exp`` from vectorised arithmetic
(:func:`exp`), and spread the vocabulary-sized work of the output head over extra CPU streams
(each stream runs on its own thread). On Metal and CUDA ``mx.exp`` is used and the stream split
is skipped.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import mlx.core as mx
import mlx.nn as nn

_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693145751953125, 1.428606765330187e-06  # ln 2 = hi + lo, n·hi exact
_ROUND = 12582912.0  # 1.5·2²³: adding then subtracting it rounds an fp32 to the nearest integer
SMALL = 1 << 14  # elements up to which a kernel takes MLX's own fused form (decoding)
_STREAMS: dict[int, list] = {}
_CE_FUNCS: dict[str, object] = {}


def parallel_streams(n: int = 2) -> list:
    """``n`` extra CPU streams when the default device is the CPU, else ``[]``."""
    if mx.default_device() != mx.cpu or n < 2:
        return []
    if n not in _STREAMS:
        _STREAMS[n] = [mx.new_stream(mx.cpu) for _ in range(n)]
    return _STREAMS[n]


def _exp_poly(x: mx.array) -> mx.array:
    n = (mx.clip(x, -88.0, 88.0) * _LOG2E + _ROUND) - _ROUND
    r = (x - n * _LN2_HI) - n * _LN2_LO  # |r| <= ln2 / 2, up to 0.72 where x > 88 is clipped
    p = 1.0 / 362880
    for c in (1 / 40320, 1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0):  # Taylor, 9
        p = p * r + c
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32)
    return mx.where(x < -87.3, 0.0, mx.where(x > 88.7, mx.inf, p * two_n))


@mx.custom_function
def _exp_cpu(x):
    return _exp_poly(x)


@_exp_cpu.vjp
def _exp_cpu_vjp(primals, cotangent, output):
    return cotangent * output


def exp_textbook(x: mx.array) -> mx.array:
    return mx.exp(x)


def exp(x: mx.array) -> mx.array:
    """``e^x``. On the CPU in fp32 it is computed as 2ⁿ·e^r (Cody–Waite reduction, n = round(x /
    ln 2), a degree-9 polynomial for e^r) from arithmetic that MLX vectorises: about 4× faster
    than ``mx.exp`` there and within 1e-7 relative error of the exact value (``mx.exp`` on the
    CPU: 4e-6); below e^-87.3 it is 0, as fp32 flushes it. Elsewhere it is ``mx.exp``."""
    if x.dtype != mx.float32 or mx.default_device() != mx.cpu:
        return mx.exp(x)
    return _exp_cpu(x)


@mx.custom_function
def _gelu_fp32(x):
    s = 1.0 / (1.0 + exp(mx.minimum(-_GELU_K * (x + _GELU_C * x * x * x), 40.0)))
    return x * s, s


@_gelu_fp32.vjp
def _gelu_fp32_vjp(x, cotangents, outputs):  # one input: MLX passes the array itself
    s = outputs[1]
    slope = x * s * (1.0 - s) * _GELU_K * (1.0 + 3 * _GELU_C * x * x)
    capped = -_GELU_K * (x + _GELU_C * x * x * x) > 40.0  # the exponent is constant there
    return cotangents[0] * (s + mx.where(capped, 0.0, slope))


def gelu_textbook(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (x + _GELU_C * x ** 3)))


def gelu(x: mx.array) -> mx.array:
    """GPT-2's GELU (tanh approximation, Hugging Face ``gelu_new``).

    0.5·x·(1 + tanh(u)) = x·sigmoid(2u) = x / (1 + exp(-2u)), u = sqrt(2/π)(x + 0.044715x³), with
    its derivative written out (s + x·s(1 - s)·2u', s = sigmoid(2u)) so the backward reuses s.
    Inputs of at most :data:`SMALL` elements (a decoded token) take mlx's compiled
    ``nn.gelu_approx``, the same function: there the number of graph nodes, not the arithmetic,
    sets the time.
    The exponent is capped at 40 where exp(-2u) would overflow; there both the value (|x|·e⁻⁴⁰)
    and its slope are zero in fp32.
    """
    if x.dtype == mx.float16:
        return 0.5 * x * (1.0 + mx.tanh(0.5 * _GELU_K * (x + _GELU_C * x * x * x)))
    if x.size <= SMALL:  # e.g. one decoded token: the fewest graph nodes win (one fused kernel)
        return nn.gelu_approx(x)
    return _gelu_fp32(x)[0]


def standardize(h: mx.array, eps: float = 1e-5) -> tuple[mx.array, mx.array, mx.array]:
    """``(x, mu, std)`` with ``x = (h - mu) / (std + eps)`` over the last axis.

    ``std`` is the unbiased (Bessel-corrected) standard deviation and ``eps`` is added to it, not
    to the variance. No affine parameters. The SAE and the concept head both use it.
    """
    mu = h.mean(-1, keepdims=True)
    centered = h - mu
    std = mx.sqrt((centered * centered).sum(-1, keepdims=True) / (h.shape[-1] - 1))
    return centered / (std + eps), mu, std


def topk_indices(z: mx.array, k: int) -> mx.array:
    """Indices of the ``k`` largest entries of ``z`` along the last axis (unordered, no grad).

    On the CPU the rows are partitioned on :func:`parallel_streams` (the partition is a scalar
    loop per row, so two threads halve it).
    """
    rows = mx.stop_gradient(z).reshape(-1, z.shape[-1])
    parts = _over_rows(rows.shape[0],
                       lambda _, sl: mx.argpartition(-rows[sl], kth=k - 1, axis=-1)[:, :k])
    return _concat(parts).reshape(*z.shape[:-1], k)


def keep_topk_textbook(z, k):
    return mx.where(z >= mx.topk(z, k, axis=-1).min(-1, keepdims=True), z, 0.0)


def keep_topk(z: mx.array, k: int) -> mx.array:
    """``z`` with all but its ``k`` largest entries per row set to zero.

    The gradient reaches exactly the kept entries.
    """
    idx = topk_indices(z, k)
    return mx.put_along_axis(mx.zeros_like(z), idx, mx.take_along_axis(z, idx, -1), -1)


def _allowed(q: mx.array, k: mx.array, mask):
    """The boolean (query, key) mask a ``mask`` argument stands for: ``"causal"`` is bottom-right
    aligned (the queries are the last of the keys), ``None`` allows every key."""
    if isinstance(mask, str):
        qL, kL = q.shape[2], k.shape[2]
        return mx.arange(kL - qL, kL)[:, None] >= mx.arange(kL)[None]
    return mx.array(True) if mask is None else mask


def attention_textbook(q, k, v, scale, mask="causal"):
    return mx.softmax(mx.where(_allowed(q, k, mask), scale * q @ k.swapaxes(-1, -2), -mx.inf), -1) @ v


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask="causal",
              dropout=None) -> mx.array:
    """Scaled dot-product attention of (B, H, Tq, D) queries over (B, H, Tk, D) keys and values.

    ``mask`` is ``"causal"`` (bottom-right aligned), ``None`` or a boolean/additive array.
    ``dropout`` (an ``nn.Dropout`` in training mode) is applied to the attention probabilities,
    which then have to be formed explicitly. Otherwise MLX's fused kernel runs; on the CPU a
    causal pass over as many keys as queries is cut into blocks (:func:`causal_attention`).
    """
    if dropout is not None:
        scores = mx.where(_allowed(q, k, mask), (q * scale) @ k.swapaxes(-1, -2),
                          mx.finfo(q.dtype).min)
        return dropout(mx.softmax(scores, axis=-1, precise=True)) @ v
    if isinstance(mask, str) and mask == "causal" and k.shape[2] == q.shape[2]:
        return causal_attention(q, k, v, scale)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float,
                     chunks: int = 8) -> mx.array:
    """Causal scaled dot-product attention of (B, H, T, D) queries over as many keys.

    On the CPU the queries are cut into ``chunks`` blocks; block i attends only to the keys up
    to its own end (bottom-right aligned causal mask), so the masked upper triangle is mostly
    never computed, and the blocks run on :func:`parallel_streams` in balanced pairs.
    """
    T = q.shape[2]
    streams = parallel_streams()
    if len(streams) < 2 or T < 128 or T % chunks or k.shape[2] != T:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    size, outs = T // chunks, []
    for i in range(chunks):
        with mx.stream(streams[min(i, chunks - 1 - i) % 2]):
            end = (i + 1) * size
            outs.append(mx.fast.scaled_dot_product_attention(
                q[:, :, i * size:end], k[:, :, :end], v[:, :, :end], scale=scale, mask="causal"))
    return mx.concatenate(outs, axis=2)


def _as_columns(targets: mx.array) -> mx.array:
    return targets[:, None] if targets.ndim == 1 else targets


def _ce_rows(stream):
    """Per-row cross-entropy (averaged over the row's targets when ``targets`` is (N, m) with
    distinct entries per row) whose forward keeps ``exp(logits - max)`` and its row sums, so the
    backward is ``softmax · c`` minus ``c`` at the target, without a second ``exp``. Forward and
    backward are both pinned to ``stream``."""
    key = str(stream)
    if key in _CE_FUNCS:
        return _CE_FUNCS[key]
    ctx = (lambda: mx.stream(stream)) if stream is not None else nullcontext

    @mx.custom_function
    def rows(logits, targets):
        with ctx():
            logits = logits.astype(mx.float32)
            m = mx.stop_gradient(logits.max(-1, keepdims=True))
            e = exp(logits - m)
            s = e.sum(-1, keepdims=True)
            t = mx.take_along_axis(logits, _as_columns(targets), -1).mean(-1, keepdims=True)
            return (mx.log(s) + m - t)[:, 0], e, s

    @rows.vjp
    def rows_vjp(primals, cotangents, outputs):
        logits, targets = primals
        c = cotangents[0][:, None]
        _, e, s = outputs
        with ctx():
            g = e * (c / s)
            idx = _as_columns(targets)
            g = mx.put_along_axis(g, idx, mx.take_along_axis(g, idx, -1) - c / idx.shape[1], -1)
            return g.astype(logits.dtype), mx.zeros_like(targets)

    _CE_FUNCS[key] = rows
    return rows


def _over_rows(n: int, part) -> list[mx.array]:
    """``part(stream, rows)`` for each block of ``n`` rows, each evaluated on its own stream of
    :func:`parallel_streams` (one block on the default stream where there is nothing to split)."""
    streams = parallel_streams()
    if len(streams) < 2 or n < 64:
        streams = [mx.default_stream(mx.default_device())]
    step = -(-n // len(streams))
    parts = []
    for i, stream in enumerate(streams):
        with mx.stream(stream):
            parts.append(part(stream, slice(i * step, min(n, (i + 1) * step))))
    return parts


def _concat(parts: list[mx.array]) -> mx.array:
    return parts[0] if len(parts) == 1 else mx.concatenate(parts)


def _reduce_rows(parts: list[mx.array], n: int, shape, reduction: str) -> mx.array:
    if reduction == "none":
        return _concat(parts).reshape(shape)
    total = sum(p.sum() for p in parts)
    return total / n if reduction == "mean" else total


def _ce_textbook_rows(logits: mx.array, targets: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    t = mx.take_along_axis(logits, _as_columns(targets), -1).mean(-1)
    return mx.logsumexp(logits, -1) - t


def cross_entropy_textbook(logits, targets):
    return (mx.logsumexp(logits, -1) - mx.take_along_axis(logits, targets[..., None], -1)[..., 0]).mean()


def cross_entropy(logits: mx.array, targets: mx.array, reduction: str = "mean") -> mx.array:
    """Cross-entropy of ``logits`` (..., V) against integer ``targets`` (...), in fp32.

    ``targets`` shaped (..., m) like ``logits`` gives each row the mean of its m cross-entropies
    (the m targets of a row must be distinct). ``reduction`` is ``"mean"``, ``"sum"`` or
    ``"none"`` (per position, shaped like ``targets`` without the m axis). On the CPU the rows
    are split over :func:`parallel_streams` and the backward reuses the forward's ``exp``; on
    other devices it is the textbook ``logsumexp(logits) - logits[target]``.
    """
    multi = targets.ndim == logits.ndim
    shape = targets.shape[:-1] if multi else targets.shape
    flat = targets.reshape(-1, targets.shape[-1]) if multi else targets.reshape(-1)
    logits = logits.reshape(-1, logits.shape[-1])
    n = flat.shape[0]
    if mx.default_device() != mx.cpu:
        return _reduce_rows([_ce_textbook_rows(logits, flat)], n, shape, reduction)
    parts = _over_rows(n, lambda stream, sl: _ce_rows(stream)(logits[sl], flat[sl])[0])
    return _reduce_rows(parts, n, shape, reduction)


def head_cross_entropy_textbook(h, targets, head):
    return cross_entropy_textbook(head(h), targets)


def head_cross_entropy(h: mx.array, targets: mx.array, head, reduction: str = "mean") -> mx.array:
    """Cross-entropy of ``head(h)`` against ``targets`` for hidden states ``h`` (..., D).

    On the CPU the rows are split over :func:`parallel_streams`, each part computing its own
    logits and loss, so the (N, V) work runs on every core. The split includes the head matmul:
    slicing one full logits tensor instead would make the backward rebuild it at full size.
    Elsewhere it is ``cross_entropy(head(h), targets)``.
    """
    if mx.default_device() != mx.cpu:
        return cross_entropy(head(h), targets, reduction)
    shape = targets.shape
    h = h.reshape(-1, h.shape[-1])
    targets = targets.reshape(-1)
    n = h.shape[0]
    parts = _over_rows(n, lambda stream, sl: _ce_rows(stream)(head(h[sl]), targets[sl])[0])
    return _reduce_rows(parts, n, shape, reduction)


def lm_cross_entropy_textbook(model, inputs, targets):
    return cross_entropy_textbook(model(inputs), targets)


def lm_cross_entropy(model, inputs: mx.array, targets: mx.array, reduction: str = "mean",
                     **forward) -> tuple[mx.array, tuple]:
    """``(cross_entropy(model(inputs), targets), the forward's other outputs)``.

    The model's one forward runs without its head (``head=False``: final hidden states) and the
    head is applied by :func:`head_cross_entropy`, so on the CPU the vocabulary-sized work is
    split over the cores. ``forward`` goes to the model (e.g. ``return_concepts=True``, whose
    concept logits come back as the second element).
    """
    out = model(inputs, head=False, **forward)
    h, rest = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, ())
    return head_cross_entropy(h, targets, model.logits, reduction), rest
