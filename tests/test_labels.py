"""Label stores: windows, equality with the on-the-fly labels, training from a store, the
cross-tokenizer rule against a direct implementation, SIGKILL + resume, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import mlx.core as mx
import numpy as np
import pytest

from cocomix_mlx import labels
from cocomix_mlx.align import last_ending_at_or_before
from cocomix_mlx.checkpoint import write_model_files
from cocomix_mlx.concepts import activation_labels, attribution_labels
from cocomix_mlx.config import ModelConfig
from cocomix_mlx.data import TokenDataset, prepare
from cocomix_mlx.embedded import python_docs
from cocomix_mlx.models import build_model
from cocomix_mlx.models.sae import SAEConfig, TopKSAE, save_sae
from cocomix_mlx.tokenizer import EOS, load_tokenizer, train_tokenizer

from conftest import cocomix

T, B = 32, 4  # student window and batch: the store is built with the same


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Documents from Python's own docs (a jsonl, one per line, some non-ASCII), a student
    sentencepiece tokenizer, its data, a random teacher of context 64 and a random SAE."""
    root = tmp_path_factory.mktemp("labels")
    text = python_docs(160_000)
    docs = [d for d in text.split("\n\n") if d.strip()][:400]
    docs[3] += " Ünïcödé — “quotes” café 🐳"
    with open(root / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    (root / "all.txt").write_text("\n\n".join(docs), encoding="utf-8")
    train_tokenizer([str(root / "all.txt")], 400, root / "tok")
    prepare([str(root / "docs.jsonl")], str(root / "tok"), str(root / "data"), val_fraction=0.05)
    make_teacher(root / "teacher", root / "tok", vocab=400)
    make_sae(root / "sae", d=32, latents=128, k=8)
    return root


def make_teacher(path, tok_dir, vocab, seed=1):
    cfg = ModelConfig(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = build_model(cfg, seed=seed)
    path.mkdir(parents=True)
    write_model_files(path, model, tok_dir)


def make_sae(path, d, latents, k):
    sae = TopKSAE(SAEConfig(d=d, latents=latents, k=k, layer=0))
    w = mx.random.normal((d, latents), key=mx.random.key(3))
    sae.decoder.weight = w / mx.linalg.norm(w, axis=0, keepdims=True)
    sae.encoder.weight = sae.decoder.weight.T
    sae.latent_bias = mx.random.normal((latents,), key=mx.random.key(4)) * 0.1
    path.mkdir(parents=True)
    save_sae(sae, path)


def build(root, name, kind="attribution", data="data", teacher="teacher", **kw):
    cfg = labels.BuildConfig(kind=kind, window=kw.pop("window", T), stride=kw.pop("stride", T),
                             batch_size=B, **kw)
    labels.build(root / teacher, root / "sae", root / data, root / name, cfg)
    return labels.open(root / name)


@pytest.mark.parametrize("n,window,stride", [(1, 4, 2), (5, 8, 4), (37, 8, 3), (40, 8, 8),
                                             (41, 8, 7), (64, 16, 1), (100, 32, 16)])
def test_windows_cover_every_position_once_with_the_promised_context(n, window, stride):
    owner = np.full(n, -1)
    for j in range(labels.window_count(n, window, stride)):
        start, lo, hi = labels.window_span(j, n, window, stride)
        assert start + min(n, window) <= n and lo <= hi
        assert np.all(owner[lo:hi] == -1)
        owner[lo:hi] = j
        for p in range(lo, hi):
            assert start <= p < start + min(n, window)
            if p >= window:  # past the first window: the promised context, counting p itself
                assert p - start + 1 >= window - stride
            if p == start + window - 1 and p < n - 1:  # a window's last position ...
                assert j + 1 == labels.window_count(n, window, stride) or \
                    labels.window_span(j + 1, n, window, stride)[0] > p - 1  # ... only if alone
    assert np.all(owner >= 0)


def test_window_batch_order_is_a_permutation_per_epoch(root):
    data = TokenDataset(root / "data", "train")
    count = (len(data) - 1) // T
    steps = -(-count // B) + 2
    starts = np.concatenate([data.starts_at(s, B, T, 7, "windows") for s in range(steps)])
    assert np.all(starts % T == 0)
    assert sorted(starts[:count] // T) == list(range(count))  # epoch 0 sees every window once
    assert not np.array_equal(starts[:count], np.arange(count) * T)  # shuffled
    assert np.array_equal(data.starts_at(3, B, T, 7, "windows"), starts[3 * B:4 * B])


@pytest.mark.parametrize("kind", ["attribution", "activation"])
def test_store_equals_on_the_fly_labels(root, kind):
    from cocomix_mlx.models.sae import load_sae
    from cocomix_mlx.objectives import load_frozen

    store = build(root, f"store_{kind}", kind)
    teacher, _ = load_frozen(root / "teacher")
    sae = load_sae(root / "sae")
    fn = attribution_labels if kind == "attribution" else activation_labels
    on_the_fly = mx.compile(partial(fn, teacher, sae, layer=0, k_attr=4))
    assert store.meta["kind"] == kind and store.meta["aligned"] is False
    for split in ("train", "val"):
        tokens = TokenDataset(root / "data", split).tokens
        stored, flags = store.split(split)
        assert stored.dtype == np.uint16 and stored.shape == (len(tokens), 4)
        n_windows = (len(tokens) - T) // T  # the store's last, shifted window labels the rest
        order = np.random.default_rng(0).permutation(n_windows)  # other batch companions
        for first in range(0, n_windows - B + 1, B):
            rows = order[first:first + B]
            x = np.stack([tokens[j * T:(j + 1) * T] for j in rows]).astype(np.int32)
            lab, valid = on_the_fly(mx.array(x))
            for r, j in enumerate(rows):
                sl = slice(j * T, (j + 1) * T)
                assert np.array_equal(np.array(lab[r]), stored[sl]), (split, j)
                assert np.array_equal(np.array(valid[r]).astype(np.uint8) + 1, flags[sl])


def test_training_from_the_store_has_the_on_the_fly_losses(root, store_train, tmp_path):
    from test_cocomix import cocomix_config
    from test_train import make_trainer

    rows = {}
    for name in ("fly", "store"):
        cfg = cocomix_config(3, root / "teacher", root / "sae", batch_order="windows",
                             seq_len=T, batch_size=B, eval_every=0, save_every=0)
        cfg.model.vocab_size, cfg.concept.concept_dim, cfg.concept.concept_num = 400, 128, 8
        if name == "store":
            cfg.objective.teacher = cfg.objective.sae = ""
            cfg.objective.label_store = str(root / "store_train")
        make_trainer(cfg, root / "data", tmp_path / name).train()
        rows[name] = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text()
                      .splitlines()]
    assert [r["step"] for r in rows["store"]] == [1, 2, 3, 3]  # three steps, one validation
    for a, b in zip(rows["fly"], rows["store"]):
        for key in [k for k in a if "loss" in k or "recall" in k]:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert rows["store"][0]["concept_loss"] > 0 and rows["store"][-1]["val_concept_loss"] > 0


def byte_level_tokenizer(root, text):
    """A byte-level BPE (GPT-2 style) tokenizer of 500 tokens trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from cocomix_mlx.tokenizer import _save_hf

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    _save_hf(tok, root, EOS, EOS, EOS)
    return root


def direct_rule(student, teacher, doc_ids):
    """The rule written out: per student position, the last teacher position whose token ends
    (in bytes of decoded text) at or before the student token's end; None where the prefix is
    not whole characters."""
    text = student.decode(doc_ids)
    t_ids = teacher.encode(text)
    t_len = [len(teacher.decode(t_ids[:t + 1]).encode()) for t in range(len(t_ids))]
    out = []
    for s in range(len(doc_ids)):
        prefix = student.decode(doc_ids[:s + 1])
        if "\ufffd" in prefix[-1:]:
            out.append(None)
            continue
        end = len(prefix.encode())
        out.append(max([t for t in range(len(t_ids)) if t_len[t] <= end], default=-1))
    return t_ids, out


@pytest.fixture(scope="module")
def cross(root):
    """A teacher on a byte-level BPE of its own (``bteacher``), the same documents prepared with
    its tokenizer (``tdata``), and the student data's store from that teacher."""
    ttok = byte_level_tokenizer(root / "ttok", (root / "all.txt").read_text(encoding="utf-8"))
    make_teacher(root / "bteacher", ttok, vocab=500, seed=5)
    prepare([str(root / "docs.jsonl")], str(ttok), str(root / "tdata"), val_fraction=0.05)
    return build(root, "cross", teacher="bteacher", window=T, stride=T // 2)


@pytest.fixture(scope="module")
def store_train(root):
    return build(root, "store_train")


def test_cross_tokenizer_labels_follow_the_rule(root, cross):
    assert np.array_equal(last_ending_at_or_before(np.array([3, 5, 9, 10, 12]),
                                                   np.array([2, 5, 7, 12])), [0, 1, 2, 2, 3])
    assert np.array_equal(last_ending_at_or_before(np.array([1, 4]), np.array([2, 4])), [-1, 1])

    ttok = root / "ttok"
    own = build(root, "own", teacher="bteacher", data="tdata", window=T, stride=T // 2)
    assert cross.meta["aligned"] is True and own.meta["aligned"] is False
    student, teacher = load_tokenizer(root / "tok"), load_tokenizer(ttok)
    checked = 0
    for split in ("train", "val"):
        s_tokens = np.asarray(TokenDataset(root / "data", split).tokens)
        t_tokens = np.asarray(TokenDataset(root / "tdata", split).tokens)
        c_lab, c_flags = cross.split(split)
        o_lab, o_flags = own.split(split)
        ends = np.flatnonzero(s_tokens == student.eos_token_id)
        t_offset, start = 0, 0
        for end in ends:
            t_ids, rule = direct_rule(student, teacher, s_tokens[start:end].tolist())
            assert t_tokens[t_offset:t_offset + len(t_ids)].tolist() == t_ids
            for s, t in enumerate(rule):
                p = start + s
                if t is None:
                    continue
                if t < 0:
                    assert c_flags[p] == 0
                else:
                    assert c_flags[p] == o_flags[t_offset + t]
                    assert np.array_equal(c_lab[p], o_lab[t_offset + t])
                    checked += 1
            assert c_flags[end] == 0  # the EOS position predicts a new document
            t_offset += len(t_ids) + 1
            start = end + 1
    assert checked > 10_000


def test_killed_build_resumes_to_identical_bytes(root, tmp_path):
    args = ["labels", "build", "--teacher", root / "teacher", "--sae", root / "sae", "--data",
            root / "data", "--window", "16", "--stride", "4", "--batch-size", "2"]
    assert cocomix(*args, "--out", tmp_path / "whole").returncode == 0
    out = tmp_path / "killed"
    env = {**os.environ, "COCOMIX_LABELS_SAVE_SECONDS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "cocomix_mlx.cli.app", *map(str, args),
                             "--out", str(out)], env=env, stderr=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    progress = tmp_path / ".killed.partial" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(progress.read_text())["train"]["batches"] > 20:
                break
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and progress.exists()
    r = cocomix(*args, "--out", out)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert cocomix(*args, "--out", out, "--resume").returncode == 0
    for name in ("meta.json", "train.labels.npy", "train.flags.npy", "val.labels.npy",
                 "val.flags.npy"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not progress.parent.exists()
    r = cocomix("labels", "inspect", out, "--data", root / "data", "--at", "5", "--tokens", "3",
                "--json")
    rows = json.loads(r.stdout)
    assert r.returncode == 0 and [x["position"] for x in rows] == [5, 6, 7]
    assert all(len(x["labels"]) == 4 for x in rows)


def test_bad_inputs_are_one_line_errors(root, store_train, tmp_path):
    make_sae(tmp_path / "narrow", d=16, latents=64, k=8)
    prepare([str(root / "all.txt")], str(root / "tok"), str(tmp_path / "other"), val_fraction=0.1)
    base = ["labels", "build", "--teacher", root / "teacher", "--data", root / "data"]
    small = ["--steps", "1", "--n-embd", "32", "--n-layer", "2", "--n-head", "4", "--seq-len",
             "32", "--batch-size", "4", "--insert-layer", "1", "--concept-num", "8"]
    cases = [
        ([*base, "--sae", tmp_path / "narrow"], "width"),
        ([*base, "--sae", root / "sae", "--k-attr", "9"], "--k-attr"),
        ([*base, "--sae", root / "sae", "--window", "65"], "context"),
        ([*base, "--sae", root / "sae", "--stride", "40", "--window", "32"], "--stride"),
        ([*base, "--sae", root / "sae", "--labels", "random"], "attribution or activation"),
        (["pretrain", "--labels", root / "store_train", "--data", tmp_path / "other", *small],
         "other data"),
        (["pretrain", "--labels", root / "store_train", "--data", root / "data",
          "--objective.labels", "activation", *small], "activation"),
        (["pretrain", "--labels", root / "store_train", "--data", root / "data", "--mode", "kd",
          *small], "--mode cocomix"),
        (["pretrain", "--labels", root / "data", "--data", root / "data", *small], "label store"),
        (["labels", "inspect", root / "store_train", "--data", root / "data", "--tokens", "0"],
         "--tokens"),
        (["labels", "inspect", root / "store_train", "--data", root / "data", "--split", "test"],
         "--split"),
        (["labels", "inspect", root / "store_train", "--data", root / "data", "--at", "-1"],
         "--at"),
    ]
    for i, (args, needle) in enumerate(cases):
        out = [] if args[0] == "labels" and args[1] == "inspect" else ["--out", tmp_path / f"bad{i}"]
        r = cocomix(*args, *out)
        lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in r.stderr, (args, r.stderr)
        assert not (tmp_path / f"bad{i}").exists()
    r = cocomix("pretrain", "--labels", root / "store_train", "--data", root / "data", *small,
                "--out", tmp_path / "ok")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["cocomix"]["concept_dim"] == 128


def test_interrupted_cross_tokenizer_build_resumes_to_identical_bytes(root, cross, tmp_path):
    """Interrupted in the validation split, after the training split was aligned, labelled and
    gathered (its teacher files gone), the resumed build equals an uninterrupted one."""
    train_tokens = len(TokenDataset(root / "data", "train"))

    def stop(done, total):
        if done > train_tokens + 200:
            raise KeyboardInterrupt

    cfg = labels.BuildConfig(window=T, stride=T // 2, batch_size=B)
    with pytest.raises(KeyboardInterrupt):
        labels.build(root / "bteacher", root / "sae", root / "data", tmp_path / "x", cfg,
                     progress=stop)
    state = json.loads((tmp_path / ".x.partial" / "progress.json").read_text())
    assert state["train"]["gathered"] and not state["val"]["gathered"]
    labels.build(root / "bteacher", root / "sae", root / "data", tmp_path / "x",
                 labels.BuildConfig(window=T, stride=T // 2, batch_size=B), resume=True)
    for name in ("train.labels.npy", "train.flags.npy", "val.labels.npy", "val.flags.npy"):
        assert (tmp_path / "x" / name).read_bytes() == (root / "cross" / name).read_bytes()


def test_store_without_a_validation_split_trains(root, tmp_path):
    from test_cocomix import cocomix_config
    from test_train import make_trainer

    prepare([str(root / "docs.jsonl")], str(root / "tok"), str(tmp_path / "d"), val_fraction=0)
    labels.build(root / "teacher", root / "sae", tmp_path / "d", tmp_path / "s",
                 labels.BuildConfig(window=T, stride=T, batch_size=B))
    store = labels.open(tmp_path / "s")
    assert store.split("val")[0].shape == (0, 4) and store.meta["val"]["tokens"] == 0
    cfg = cocomix_config(2, "", "", seq_len=T, batch_size=B, eval_every=0, save_every=0)
    cfg.model.vocab_size, cfg.concept.concept_dim, cfg.concept.concept_num = 400, 128, 8
    cfg.objective.label_store = str(tmp_path / "s")
    last = make_trainer(cfg, tmp_path / "d", tmp_path / "run").train()
    assert last["concept_loss"] > 0 and "val_loss" not in last
