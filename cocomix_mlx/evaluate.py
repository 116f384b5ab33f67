"""Evaluation: perplexity on token shards."""

from __future__ import annotations

import math

import mlx.core as mx

from .checkpoint import load_model
from .data import TokenDataset, check_vocab, load_meta
from .errors import ConfigError
from .ops import head_cross_entropy


def perplexity(model_dir: str, data_dir: str, seq_len: int = 0, batch_size: int = 8,
               max_batches: int = 0, split: str = "val") -> dict[str, float]:
    """Mean next-token loss and perplexity over non-overlapping windows of ``split``."""
    if split not in ("val", "train"):
        raise ConfigError(f"--split must be val or train, not {split}")
    model, config = load_model(model_dir)
    model.eval()
    check_vocab(load_meta(data_dir), config["vocab_size"])
    context = config.get("n_positions") or config.get("max_position_embeddings") or 1024
    seq_len = seq_len or context
    if seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's context {context}")
    data = TokenDataset(data_dir, split)

    @mx.compile
    def summed_loss(inputs, targets):
        return head_cross_entropy(model.hidden_states(inputs), targets, model.logits, "sum")

    total, tokens = 0.0, 0
    for inputs, targets in data.eval_batches(batch_size, seq_len, max_batches or None):
        total += summed_loss(mx.array(inputs), mx.array(targets)).item()
        tokens += targets.size
    if tokens == 0:
        raise ConfigError(f"the {split} split is shorter than one window of {seq_len + 1} tokens; "
                          "lower --seq-len")
    loss = total / tokens
    return {"loss": loss, "ppl": math.exp(loss), "tokens": tokens}
