"""Training objectives. Each maps ``(model, inputs, targets)`` to ``(loss, metrics)``."""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .errors import ConfigError
from .ops import head_cross_entropy

Objective = Callable[[nn.Module, mx.array, mx.array], tuple[mx.array, dict[str, mx.array]]]


def ntp(model: nn.Module, inputs: mx.array, targets: mx.array):
    """Plain next-token prediction: mean cross-entropy of the next token."""
    loss = head_cross_entropy(model.hidden_states(inputs), targets, model.logits)
    return loss, {"ntp_loss": loss}


OBJECTIVES: dict[str, Objective] = {"ntp": ntp}


def get_objective(mode: str) -> Objective:
    if mode not in OBJECTIVES:
        raise ConfigError(f"unknown mode '{mode}'; available: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[mode]
