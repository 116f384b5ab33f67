"""Training objectives. Each maps ``(model, inputs, targets)`` to ``(loss, metrics)``.

``ntp`` (also the pause baseline, whose model interleaves pause slots), ``cocomix`` (NTP plus
λ · the concept loss on labels from a frozen teacher + SAE, docs/semantics.md) and ``kd`` (NTP plus
``kd_weight`` · KL(teacher ‖ student)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .concepts import (activation_labels, attribution_labels, check_sae, concept_loss,
                       concept_recall)
from .config import Config, ObjectiveConfig
from .errors import ConfigError
from .models.backbone import backbone
from .ops import cross_entropy, lm_cross_entropy

Objective = Callable[[nn.Module, mx.array, mx.array], tuple[mx.array, dict[str, mx.array]]]
MODES = ("ntp", "cocomix", "kd", "pause")


def ntp(model: nn.Module, inputs: mx.array, targets: mx.array):
    """Plain next-token prediction: mean cross-entropy of the next token."""
    loss, _ = lm_cross_entropy(model, inputs, targets)
    return loss, {"ntp_loss": loss}


def concept_objective(cc: ObjectiveConfig, labels_of) -> Objective:
    """``CE_ntp + λ · mean_i CE(concept_logits, label_i)`` with ``labels_of(inputs, targets)``
    giving ``(next-token targets, labels, valid)`` (labels ``None``: NTP on the mixing model)."""

    def objective(model, inputs, targets):
        targets, labels, valid = labels_of(inputs, targets)
        loss, (z,) = lm_cross_entropy(model, inputs, targets, return_concepts=True)
        metrics = {"ntp_loss": loss}
        if labels is None:
            return loss, metrics
        closs = concept_loss(z, labels, valid)
        metrics["concept_loss"] = closs
        metrics["concept_recall"] = mx.stop_gradient(concept_recall(z, labels, valid))
        return loss + cc.lam * closs, metrics

    return objective


def cocomix(teacher: Optional[nn.Module], sae, cc: ObjectiveConfig) -> Objective:
    """CoCoMix with labels from ``teacher`` + ``sae`` computed in the step.

    With ``λ = 0`` (the mixing-only ablation) no teacher is needed.
    """
    labels_fn = attribution_labels if cc.labels == "attribution" else activation_labels

    def labels_of(inputs, targets):
        if teacher is None or cc.lam == 0:
            return targets, None, None
        labels, valid = labels_fn(teacher, sae, inputs, cc.sae_layer, cc.k_attr)
        return targets, labels, valid if cc.mask_zero_rows else mx.ones_like(valid)

    return concept_objective(cc, labels_of)


def cocomix_from_store(cc: ObjectiveConfig) -> Objective:
    """CoCoMix with labels read from a label store: ``targets`` is ``(next tokens, labels,
    flags)`` (``labels.LabeledDataset``). Flag 2 marks a labelled position, 1 one whose scores
    were all zero (used only with ``mask_zero_rows = false``, as in the step), 0 no label."""
    floor = 2 if cc.mask_zero_rows else 1

    def labels_of(inputs, targets):
        targets, labels, flags = targets
        return targets, labels, (flags >= floor).astype(mx.float32)

    return concept_objective(cc, labels_of)


def kl_divergence(teacher_logits: mx.array, student_logits: mx.array) -> mx.array:
    """Mean over positions of KL(p_teacher ‖ p_student) of next-token distributions."""
    log_p = teacher_logits - mx.logsumexp(teacher_logits, -1, keepdims=True)
    log_q = student_logits - mx.logsumexp(student_logits, -1, keepdims=True)
    return (mx.exp(log_p) * (log_p - log_q)).sum(-1).mean()


def kd(teacher: nn.Module, weight: float) -> Objective:
    """Knowledge distillation baseline: ``CE_ntp + weight · KL(teacher ‖ student)``."""

    def objective(model, inputs, targets):
        logits = model(inputs).astype(mx.float32)
        loss = cross_entropy(logits, targets)
        kl = kl_divergence(mx.stop_gradient(teacher(inputs).astype(mx.float32)), logits)
        return loss + weight * kl, {"ntp_loss": loss, "kd_loss": kl}

    return objective


def load_frozen(path: str | Path, dtype: str = "float32") -> tuple[nn.Module, dict]:
    """A checkpoint as a frozen model in ``dtype`` (e.g. fp16-shipped weights computed in fp32),
    with its config."""
    from .checkpoint import load_model

    model, config = load_model(path)
    model.set_dtype(getattr(mx, dtype))
    model.eval()
    model.freeze()
    return model, config


def load_teacher(cfg: Config, data_meta: dict | None = None) -> nn.Module:
    """The frozen teacher of ``cfg.objective.teacher``, checked against the student's data."""
    from .tokenizer import load_tokenizer

    path = cfg.objective.teacher
    if not path:
        raise ConfigError(f"--mode {cfg.train.mode} needs a teacher: pass --teacher DIR")
    teacher, tconfig = load_frozen(path, cfg.train.dtype)
    if data_meta is not None:
        tid = load_tokenizer(Path(path)).identity if (Path(path) / "tokenizer.json").exists() \
            else None
        if tid is not None and data_meta.get("tokenizer_id") not in (None, tid):
            raise ConfigError(f"the teacher in {path} uses a different tokenizer than the data; "
                              "prepare the data with the teacher's tokenizer")
        if tconfig.get("vocab_size", 0) < data_meta["vocab_size"]:
            raise ConfigError(f"the teacher's vocabulary ({tconfig.get('vocab_size')}) is smaller "
                              f"than the data's ({data_meta['vocab_size']})")
    return teacher


def build_objective(cfg: Config, data_meta: dict | None = None) -> Objective:
    """The objective of ``cfg.train.mode``, loading the teacher and SAE it needs."""
    mode, cc = cfg.train.mode, cfg.objective
    if mode not in MODES:
        raise ConfigError(f"unknown mode '{mode}'; available: {', '.join(MODES)}")
    if mode in ("ntp", "pause"):
        return ntp
    if mode == "kd":
        teacher = load_teacher(cfg, data_meta)
        if teacher.args.vocab_size != cfg.model.vocab_size:
            raise ConfigError(f"KD needs the same vocabulary: teacher {teacher.args.vocab_size}, "
                              f"student {cfg.model.vocab_size}")
        return kd(teacher, cc.kd_weight)
    if cc.labels not in ("attribution", "activation"):
        raise ConfigError(f"objective.labels must be attribution or activation, not {cc.labels!r}")
    if cc.lam == 0:
        return cocomix(None, None, cc)
    if cc.label_store:
        return cocomix_from_store(cc)
    from .models.sae import load_sae

    if not cc.sae:
        raise ConfigError("--mode cocomix needs an SAE: pass --sae DIR (or --lam 0)")
    teacher = load_teacher(cfg, data_meta)
    sae = load_sae(cc.sae)
    sae.set_dtype(mx.float32)
    sae.freeze()
    check_sae(teacher, sae)
    depth = backbone(teacher).depth
    if not 0 <= cc.sae_layer < depth:
        raise ConfigError(f"--sae-layer {cc.sae_layer} is out of range for a teacher with "
                          f"{depth} blocks")
    if sae.cfg.latents != cfg.concept.concept_dim:
        raise ConfigError(f"the SAE has {sae.cfg.latents} latents but concept_dim is "
                          f"{cfg.concept.concept_dim}; set --concept-dim {sae.cfg.latents}")
    if not 0 < cc.k_attr <= sae.cfg.k:
        raise ConfigError(f"k_attr={cc.k_attr} must be in 1..{sae.cfg.k} (the SAE's k)")
    return cocomix(teacher, sae, cc)


def get_objective(mode: str) -> Objective:
    """Objectives that need no teacher (``ntp``, ``pause``)."""
    if mode in ("ntp", "pause"):
        return ntp
    raise ConfigError(f"mode '{mode}' needs a teacher; build it with build_objective(cfg)")
