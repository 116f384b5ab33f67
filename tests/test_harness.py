"""lm-evaluation-harness: our adapter scores a checkpoint exactly as lm-eval's own Hugging Face
model scores the same weights exported to transformers — multiple choice (loglikelihood), rolling
perplexity (loglikelihood_rolling) and greedy generation (generate_until) — on local tasks."""

import json
import re
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import cocomix, english_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

MC = """task: mini_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
ROLLING = """task: mini_wiki
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/wiki.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
"""
GEN = """task: mini_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", english_text(40_000))
                 if 40 < len(s.strip()) < 200][:40]
    with open(root / "mc.jsonl", "w") as f:
        for i in range(12):
            words = sentences[i].split()
            cut = len(words) // 2
            others = [" " + " ".join(sentences[(i + j) % 40].split()[cut:]) for j in (7, 13)]
            f.write(json.dumps({"context": " ".join(words[:cut]), "gold": i % 3,
                                "choices": others[:i % 3] + [" " + " ".join(words[cut:])] +
                                others[i % 3:]}) + "\n")
    with open(root / "wiki.jsonl", "w") as f:
        for i in range(4):  # one document longer than the 128-token context: several windows
            f.write(json.dumps({"text": " ".join(sentences[10 * i:10 * i + (10 if i else 25)])})
                    + "\n")
    with open(root / "gen.jsonl", "w") as f:
        for s in sentences[:6]:
            words = s.split()
            f.write(json.dumps({"context": " ".join(words[:4]), "target": " " +
                                " ".join(words[4:6])}) + "\n")
    for name, text in (("mc", MC), ("wiki", ROLLING), ("gen", GEN)):
        (root / f"{name}.yaml").write_text(text.format(data=root))
    return root


def test_our_adapter_scores_like_lm_evals_own_hf_model(tasks, tmp_path, monkeypatch):
    import cocomix_mlx as cm
    from cocomix_mlx.convert import export_gpt2
    from cocomix_mlx.harness import evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    names = ["mini_mc", "mini_wiki", "mini_gen"]
    net, tok = cm.load(ROOT / "weights" / "ntp")
    ours = evaluate(net, tok, names, batch_size=4, include=tasks)
    export_gpt2(ROOT / "weights" / "ntp", tmp_path / "hf")
    ref = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'},max_length=128,dtype=float32",
        tasks=names, task_manager=TaskManager(include_path=str(tasks)), device="cpu",
        batch_size=4, bootstrap_iters=0, log_samples=False)["results"]
    assert ours["mini_mc"]["acc"] == ref["mini_mc"]["acc,none"]
    assert ours["mini_mc"]["acc_norm"] == ref["mini_mc"]["acc_norm,none"]
    assert ours["mini_wiki"]["word_perplexity"] == pytest.approx(
        ref["mini_wiki"]["word_perplexity,none"], rel=1e-4)
    assert ours["mini_wiki"]["byte_perplexity"] == pytest.approx(
        ref["mini_wiki"]["byte_perplexity,none"], rel=1e-5)
    assert ours["mini_gen"]["exact_match"] == ref["mini_gen"]["exact_match,none"]
    assert 1 < ours["mini_wiki"]["word_perplexity"] < 1e5


def test_our_adapter_and_mlx_lm_evaluate_agree_on_an_ntp_checkpoint(tasks, monkeypatch):
    """mlx-lm's own lm-eval model loads our NTP checkpoint too and gives the same multiple-choice
    accuracies. (Their rolling perplexities differ by convention, not by arithmetic: mlx-lm does
    not predict a document's first token and does not cut long documents into windows; ours
    follow lm-eval's Hugging Face model, checked above.)"""
    import cocomix_mlx as cm
    from cocomix_mlx.harness import evaluate
    from lm_eval.tasks import TaskManager
    from mlx_lm.evaluate import MLXLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    theirs = lm_eval.simple_evaluate(
        model=MLXLM(str(ROOT / "weights" / "ntp"), batch_size=4), tasks=["mini_mc"],
        task_manager=TaskManager(include_path=str(tasks)), bootstrap_iters=0,
        log_samples=False)["results"]
    net, tok = cm.load(ROOT / "weights" / "ntp")
    ours = evaluate(net, tok, ["mini_mc"], batch_size=4, include=tasks)
    assert ours["mini_mc"]["acc"] == theirs["mini_mc"]["acc,none"]
    assert ours["mini_mc"]["acc_norm"] == theirs["mini_mc"]["acc_norm,none"]


def test_cli_harness_on_a_cocomix_model_steered_and_compared(tasks, tmp_path, monkeypatch):
    """A CoCoMix checkpoint (logits at the concept slots) and the NTP twin side by side, as
    JSON; steering changes the CoCoMix scores; an unknown task is one line."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    base = ["eval", "harness", "--tasks", "mini_mc,mini_wiki", "--include", tasks,
            "--batch-size", "4"]
    r = cocomix(*base, "--model", ROOT / "weights" / "cocomix", "--compare",
                ROOT / "weights" / "ntp", "--json", tmp_path / "plain.json")
    assert r.returncode == 0, r.stderr
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert set(plain) == {str(ROOT / "weights" / "cocomix"), str(ROOT / "weights" / "ntp")}
    assert "mini_wiki word_perplexity" in r.stdout.replace("\n", " ") or "mini_wiki" in r.stdout
    r = cocomix(*base, "--model", ROOT / "weights" / "cocomix", "--steer", "3=-10", "--json",
                tmp_path / "steered.json")
    assert r.returncode == 0, r.stderr
    steered = json.loads((tmp_path / "steered.json").read_text())
    key = str(ROOT / "weights" / "cocomix")
    assert steered[key]["mini_wiki"]["word_perplexity"] != plain[key]["mini_wiki"]["word_perplexity"]
    r = cocomix("eval", "harness", "--model", ROOT / "weights" / "ntp", "--tasks", "nope_task")
    assert r.returncode == 2 and "unknown lm-eval task" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_continuation_longer_than_the_context_is_scored_on_what_the_window_predicts():
    """Context 128, a 200-token continuation: the window holds its last 128 tokens, and those
    are what the score sums (it once sliced past the row's start and failed to broadcast)."""
    import mlx.core as mx

    from cocomix_mlx.checkpoint import load
    from cocomix_mlx.harness import harness_lm

    model, tokenizer = load(ROOT / "weights" / "ntp")
    lm = harness_lm(model, tokenizer, batch_size=2)
    cont = [(7 * i) % 4000 + 5 for i in range(200)]
    (total, _), (short, _) = lm._score([([3, 4], cont), ([3, 4], cont[:10])])
    window = ([3, 4] + cont)[-129:]
    logits = model(mx.array([window[:-1]])).astype(mx.float32)[0]
    logprobs = logits - mx.logsumexp(logits, -1, keepdims=True)
    expected = mx.take_along_axis(logprobs, mx.array(window[1:])[:, None], -1).sum().item()
    assert total == pytest.approx(expected, rel=1e-5) and short > total
