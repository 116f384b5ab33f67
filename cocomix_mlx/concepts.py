"""Concept labels from a frozen teacher and its SAE (docs/semantics.md).

``h`` is the teacher's residual after block ``layer``; ``g = ∂L/∂h`` of the teacher's mean
next-token cross-entropy over the sequence (so the last position, whose logits are not in the
loss, gets ``g = 0``); the attribution of latent j is ``(g · W_dec[:, j]) · z_j`` with ``z`` the
SAE's post-TopK latents. Works for every model :func:`models.backbone.backbone` covers.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .errors import ConfigError
from .models.backbone import backbone
from .ops import cross_entropy, head_cross_entropy, topk_indices


def residual_and_grad(teacher: nn.Module, tokens: mx.array, layer: int):
    """Teacher residual ``h`` after block ``layer`` and ``g = ∂L/∂h`` of its mean next-token
    cross-entropy within ``tokens`` (positions 0..T-2 predict 1..T-1)."""
    bb = backbone(teacher)
    h, upper = bb.split(tokens, layer)
    h = mx.stop_gradient(h)

    def loss(h):
        return head_cross_entropy(upper(h)[:, :-1], tokens[:, 1:], bb.head)

    return h, mx.grad(loss)(h)


def check_sae(teacher: nn.Module, sae) -> None:
    width = backbone(teacher).width
    if sae.cfg.d != width:
        raise ConfigError(f"the SAE reads width {sae.cfg.d} but the teacher's residual has width "
                          f"{width}; train or convert an SAE for this teacher")


def attribution(teacher: nn.Module, sae, tokens: mx.array, layer: int) -> mx.array:
    """``(g @ W_dec) * sae.encode(h)``, shape (B, T, C). Teacher and SAE get no gradient."""
    check_sae(teacher, sae)
    h, g = residual_and_grad(teacher, tokens, layer)
    return mx.stop_gradient((g @ sae.W_dec) * sae.encode(h))


def activation_scores(teacher: nn.Module, sae, tokens: mx.array, layer: int) -> mx.array:
    """Ablation: the SAE's latent activations themselves as label scores, (B, T, C)."""
    check_sae(teacher, sae)
    return mx.stop_gradient(sae.encode(backbone(teacher).residual(tokens, layer)))


def concept_labels(scores: mx.array, k_attr: int) -> tuple[mx.array, mx.array]:
    """Labels = indices of the ``k_attr`` largest scores per position, and a float mask that is
    0 where a position's scores are all zero (e.g. the last position's attribution)."""
    labels = topk_indices(scores, k_attr)
    valid = mx.stop_gradient((scores != 0).any(-1).astype(mx.float32))
    return labels, valid


def sparse_top(values: mx.array, index: mx.array, k_attr: int) -> tuple[mx.array, mx.array]:
    """:func:`concept_labels` of the dense (..., C) scores that are ``values`` at ``index``
    (..., k) and zero elsewhere, without building them.

    Where fewer than ``k_attr`` scores are positive the dense top-k includes zeros; they are
    taken at the smallest indices outside ``index`` (among the first k + k_attr, so they exist).
    """
    k = index.shape[-1]
    spare = mx.arange(k + k_attr)
    taken = (index[..., None, :] == spare[:, None]).any(-1)
    values = mx.concatenate([values, mx.where(taken, -mx.inf, 0.0).astype(values.dtype)], -1)
    index = mx.concatenate([index, mx.broadcast_to(spare, taken.shape).astype(index.dtype)], -1)
    labels = mx.take_along_axis(index, topk_indices(values, k_attr), -1)
    valid = (values[..., :k] != 0).any(-1).astype(mx.float32)
    return mx.stop_gradient(labels), mx.stop_gradient(valid)


def attribution_labels(teacher: nn.Module, sae, tokens: mx.array, layer: int,
                       k_attr: int) -> tuple[mx.array, mx.array]:
    """``concept_labels(attribution(...), k_attr)``, computed only at the SAE's k active latents
    (the attribution is zero elsewhere): the same labels without the dense (B, T, C) scores."""
    check_sae(teacher, sae)
    h, g = residual_and_grad(teacher, tokens, layer)
    index, z = sae.encode_sparse(h)
    return sparse_top(mx.take_along_axis(g @ sae.W_dec, index, -1) * z, index, k_attr)


def activation_labels(teacher: nn.Module, sae, tokens: mx.array, layer: int,
                      k_attr: int) -> tuple[mx.array, mx.array]:
    """Ablation: ``concept_labels(activation_scores(...), k_attr)`` from the k active latents."""
    check_sae(teacher, sae)
    index, z = sae.encode_sparse(mx.stop_gradient(backbone(teacher).residual(tokens, layer)))
    return sparse_top(z, index, k_attr)


def concept_loss(concept_logits: mx.array, labels: mx.array, valid: mx.array) -> mx.array:
    """``mean_i CE(z, label_i)`` averaged over the valid positions."""
    rows = cross_entropy(concept_logits, labels, reduction="none")
    return (rows * valid).sum() / mx.maximum(valid.sum(), 1.0)


def concept_recall(concept_logits: mx.array, labels: mx.array, valid: mx.array) -> mx.array:
    """Fraction of the labels found among the predicted top-``k_attr`` concepts (valid rows).

    A label counts as found when fewer than ``k_attr`` logits of its row are above its own.
    """
    k = labels.shape[-1]
    z = mx.stop_gradient(concept_logits)
    own = mx.take_along_axis(z, labels, -1)
    hits = sum(((z > own[..., i:i + 1]).sum(-1) < k).astype(mx.float32) for i in range(k)) / k
    return (hits * valid).sum() / mx.maximum(valid.sum(), 1.0)
