"""Evaluation: perplexity on token shards, zero-shot multiple choice, last-word prediction."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mlx.core as mx

from .checkpoint import load_model
from .data import TokenDataset, check_tokenizer, check_vocab, load_meta
from .errors import ConfigError, DataError
from .models.backbone import backbone
from .ops import head_cross_entropy


def perplexity(model_dir: str, data_dir: str, seq_len: int = 0, batch_size: int = 8,
               max_batches: int = 0, split: str = "val", blocks: int = 0) -> dict[str, float]:
    """Mean next-token loss and perplexity over ``split``.

    By default, consecutive windows of ``seq_len`` predictions (every token but the first is
    predicted once, each with up to ``seq_len`` tokens of context). ``blocks=N`` scores disjoint
    blocks of N tokens instead, as the official OpenWebText evaluation does: each block's first
    token is context only, so a block predicts N - 1 tokens and the loss is slightly higher.
    """
    if split not in ("val", "train"):
        raise ConfigError(f"--split must be val or train, not {split}")
    if batch_size < 1 or seq_len < 0 or max_batches < 0 or blocks < 0:
        raise ConfigError("--batch-size must be positive, --seq-len, --blocks and --max-batches "
                          f">= 0 (got {batch_size}, {seq_len}, {blocks}, {max_batches})")
    if blocks and seq_len:
        raise ConfigError("give --blocks or --seq-len, not both")
    if blocks == 1:
        raise ConfigError("--blocks needs at least 2 tokens per block")
    model, _ = load_model(model_dir)
    model.eval()
    bb = backbone(model)
    check_vocab(load_meta(data_dir), bb.vocab)
    check_tokenizer(model_dir, data_dir)
    context = bb.context
    if blocks > context + 1:
        raise ConfigError(f"--blocks {blocks} exceeds the model's context {context} + 1")
    seq_len = blocks - 1 if blocks else seq_len or context
    if seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's context {context}")
    data = TokenDataset(data_dir, split)

    @mx.compile
    def summed_loss(inputs, targets):
        return head_cross_entropy(bb.hidden(inputs), targets, bb.head, "sum")

    total, tokens = 0.0, 0
    for inputs, targets in data.eval_batches(batch_size, seq_len, max_batches or None, blocks):
        total += summed_loss(mx.array(inputs), mx.array(targets)).item()
        tokens += targets.size
    if tokens == 0:
        raise ConfigError(f"the {split} split is shorter than one window of {seq_len + 1} tokens; "
                          f"lower {'--blocks' if blocks else '--seq-len'}")
    loss = total / tokens
    return {"loss": loss, "ppl": math.exp(loss), "tokens": tokens}


def continuation_logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Sum of log p(continuation | context) and whether greedy decoding would produce it.

    The context is cut from the left to fit the model's positions.
    """
    if not continuation:
        raise DataError("an empty continuation cannot be scored")
    tokens = (context + continuation)[-(backbone(model).context + 1):]
    n = len(continuation)
    if len(tokens) <= n:
        raise DataError("a continuation is longer than the model's context")
    logits = model(mx.array([tokens[:-1]]))[0, -n:].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, -1, keepdims=True)
    target = mx.array(tokens[-n:])
    total = mx.take_along_axis(logprobs, target[:, None], -1).sum()
    greedy = mx.all(mx.argmax(logits, -1) == target)
    return total.item(), bool(greedy.item())


def read_tasks(path: str | Path) -> list[dict]:
    """JSONL multiple-choice items: ``{"context": str, "choices": [str, ...], "gold": int}``."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read tasks {path}: {e}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            choices, gold = item["choices"], item["gold"]
            ok = isinstance(item["context"], str) and isinstance(choices, list) and \
                len(choices) >= 2 and all(isinstance(c, str) and c for c in choices) and \
                type(gold) is int and 0 <= gold < len(choices)  # not "0", true or 0.0
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{path}:{lineno}: expected {{\"context\": str, \"choices\": [str, ...], "
                            "\"gold\": index}")
        items.append(item)
    if not items:
        raise DataError(f"no tasks in {path}")
    return items


def multiple_choice(model, tokenizer, items: list[dict]) -> dict[str, float]:
    """Zero-shot multiple choice by log-likelihood (as lm-eval-harness scores it): ``acc`` picks
    the highest sum of log-probabilities, ``acc_norm`` the highest per byte of the choice."""
    model.eval()
    correct = correct_norm = 0
    for item in items:
        context = tokenizer.encode(item["context"])
        scores = [continuation_logprob(model, context, tokenizer.encode(c))[0]
                  for c in item["choices"]]
        norm = [s / len(c.encode("utf-8")) for s, c in zip(scores, item["choices"])]
        gold = int(item["gold"])
        correct += max(range(len(scores)), key=scores.__getitem__) == gold
        correct_norm += max(range(len(norm)), key=norm.__getitem__) == gold
    n = len(items)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}


_WORD = re.compile(r"(\s)([A-Za-z][A-Za-z'-]*)([.!?\"”’)]*)\s*$")


def last_word_items(text: str, n: int = 200, min_words: int = 40) -> list[dict]:
    """LAMBADA-style items from running text: each paragraph of at least ``min_words`` words
    whose last word is alphabetic becomes (context = everything before that word, target =
    " " + the word)."""
    if n < 1:
        raise ConfigError(f"--n must be positive, not {n}")
    items = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if len(para.split()) < min_words:
            continue
        m = _WORD.search(para)
        if m:
            items.append({"context": para[:m.start()], "target": " " + m.group(2)})
        if len(items) >= n:
            break
    return items


def last_word(model, tokenizer, items: list[dict]) -> dict[str, float]:
    """Accuracy (greedy decoding yields the target word) and target perplexity per word."""
    if not items:
        raise DataError("no paragraphs long enough for last-word items; give more text")
    model.eval()
    hits, total = 0, 0.0
    for item in items:
        logprob, greedy = continuation_logprob(model, tokenizer.encode(item["context"]),
                                               tokenizer.encode(item["target"]))
        hits += greedy
        total += logprob
    return {"acc": hits / len(items), "ppl": math.exp(-total / len(items)), "n": len(items)}
