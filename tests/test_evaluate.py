"""Zero-shot scoring against hand-computed log-likelihoods; last-word items."""

import json

import mlx.core as mx
import numpy as np
import pytest

from cocomix_mlx.config import ModelConfig
from cocomix_mlx.errors import DataError
from cocomix_mlx.evaluate import continuation_logprob, last_word_items, multiple_choice, read_tasks
from cocomix_mlx.models import build_model

from test_cocomix import randomize
from test_generate import saved, tok_dir  # noqa: F401  (fixture)


def hand_logprob(model, context, continuation):
    tokens = context + continuation
    logits = np.array(model(mx.array([tokens]))[0]).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return sum(logp[len(context) + i - 1, t] for i, t in enumerate(continuation))


def test_multiple_choice_equals_hand_computed_loglikelihood(tok_dir, tmp_path):  # noqa: F811
    cfg = ModelConfig(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model, tok = saved(randomize(build_model(cfg), 5), tok_dir, tmp_path / "m")
    items = [{"context": "the whale and the", "choices": [" sea", " ship and the captain"], "gold": 0},
             {"context": "the ship", "choices": [" and", " whale", " captain"], "gold": 2}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    assert read_tasks(tmp_path / "t.jsonl") == items
    acc = acc_norm = 0
    for item in items:
        ctx = tok.encode(item["context"])
        scores = [hand_logprob(model, ctx, tok.encode(c)) for c in item["choices"]]
        for c, s in zip(item["choices"], scores):
            assert continuation_logprob(model, ctx, tok.encode(c))[0] == pytest.approx(s, abs=1e-4)
        acc += int(np.argmax(scores)) == item["gold"]
        acc_norm += int(np.argmax([s / len(c) for s, c in zip(scores, item["choices"])])) == item["gold"]
    result = multiple_choice(model, tok, items)
    assert result == {"acc": acc / 2, "acc_norm": acc_norm / 2, "n": 2}
    (tmp_path / "bad.jsonl").write_text('{"context": "x", "choices": ["a"], "gold": 0}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        read_tasks(tmp_path / "bad.jsonl")


def test_last_word_items_split_paragraphs():
    para = " ".join(["word"] * 45) + " and then the whale."
    items = last_word_items(para + "\n\nshort one.\n\n" + para.replace("whale", "sea"), n=5)
    assert [i["target"] for i in items] == [" whale", " sea"]
    assert items[0]["context"].endswith("then the") and not items[0]["context"].endswith(" ")


def test_plot_writes_figure_and_rejects_bad_input(tmp_path):
    from cocomix_mlx.errors import ConfigError
    from cocomix_mlx.plot import plot_runs, read_metrics

    for name, offset in (("ntp", 0.0), ("cocomix", -0.1)):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "loss": 6 - s / 50 + offset} for s in range(1, 101)]
        rows += [{"step": 50, "val_loss": 5.2 + offset}, {"step": 100, "val_loss": 4.5 + offset}]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_metrics(tmp_path / "ntp")["val_loss"] == [(50, 5.2), (100, 4.5)]
    out = plot_runs([tmp_path / "ntp", tmp_path / "cocomix"], tmp_path / "fig" / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError):
        plot_runs([tmp_path / "ntp"], tmp_path / "loss.txt")
    with pytest.raises(DataError):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        plot_runs([tmp_path / "ntp"], out)
    assert out.read_bytes() == before  # replaced only with force
    assert plot_runs([tmp_path / "ntp"], out, force=True).read_bytes() != before
