"""Training objectives. Each maps ``(model, inputs, targets)`` to ``(loss, metrics)``."""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .errors import ConfigError

Objective = Callable[[nn.Module, mx.array, mx.array], tuple[mx.array, dict[str, mx.array]]]


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean next-token cross-entropy in fp32."""
    return nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="mean")


def ntp(model: nn.Module, inputs: mx.array, targets: mx.array):
    """Plain next-token prediction."""
    loss = cross_entropy(model(inputs), targets)
    return loss, {"ntp_loss": loss}


OBJECTIVES: dict[str, Objective] = {"ntp": ntp}


def get_objective(mode: str) -> Objective:
    if mode not in OBJECTIVES:
        raise ConfigError(f"unknown mode '{mode}'; available: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[mode]
