"""Token shards (and the tokenizer they are made with): round trips, input formats, bad input."""

import gzip
import json

import numpy as np
import pytest

from cocomix_mlx.data import TokenDataset, prepare
from cocomix_mlx.errors import DataError
from cocomix_mlx.tokenizer import EOS, load_tokenizer, train_tokenizer

from conftest import cocomix, english_text


@pytest.fixture(scope="module")
def docs():
    return [english_text(120_000), english_text(60_000, skip_chars=120_000),
            "Ünïcödé — “quotes” and emoji 🐳 with\ttabs  and  double spaces\n"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, docs):
    root = tmp_path_factory.mktemp("tok")
    (root / "a.txt").write_text(docs[0], encoding="utf-8")
    return train_tokenizer([str(root / "a.txt")], 700, root / "tok")


def test_trained_tokenizer_round_trips_and_loads_in_hf_and_mlx_lm(tok_dir, docs):
    from mlx_lm.tokenizer_utils import load as load_mlx_lm_tokenizer
    from transformers import AutoTokenizer

    tok = load_tokenizer(tok_dir)
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    wrapper = load_mlx_lm_tokenizer(tok_dir)
    for text in docs:
        ids = tok.encode(text)
        assert tok.decode(ids) == text  # byte fallback: nothing is lost, emoji included
        assert hf.encode(text, add_special_tokens=False) == ids
        assert wrapper.encode(text, add_special_tokens=False) == ids
    assert tok.vocab_size == 700 and hf.eos_token == EOS == wrapper.eos_token


def test_prepare_round_trip_all_input_kinds(tmp_path, tok_dir, docs):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "a.txt").write_text(docs[0], encoding="utf-8")
    with gzip.open(inputs / "sub" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(docs[1])
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": docs[2]}) + "\n\n"
                                      + json.dumps({"text": "second doc"}) + "\n")
    meta = prepare([str(inputs), str(tmp_path / "c.jsonl")], str(tok_dir), str(tmp_path / "d"),
                   val_fraction=0.0)
    tok = load_tokenizer(tok_dir)
    train = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16)
    assert meta["dtype"] == "uint16" and meta["train_tokens"] == len(train)
    assert meta["val_tokens"] == 0 and meta["vocab_size"] == 700
    expected = EOS.join([docs[0], docs[1], docs[2], "second doc"]) + EOS
    assert tok.decode(train.tolist()) == expected
    assert int((train == tok.eos_token_id).sum()) == 4
    assert (tmp_path / "d" / "tokenizer" / "tokenizer.json").exists()


def test_validation_split_is_the_tail_at_a_line_break(tmp_path, tok_dir, docs):
    (tmp_path / "a.txt").write_text(docs[0], encoding="utf-8")
    prepare([str(tmp_path / "a.txt")], str(tok_dir), str(tmp_path / "d"), val_fraction=0.1)
    tok = load_tokenizer(tok_dir)
    train = tok.decode(TokenDataset(tmp_path / "d", "train").tokens.tolist())
    val = tok.decode(TokenDataset(tmp_path / "d", "val").tokens.tolist())
    assert train + val == docs[0] + EOS
    assert train.endswith("\n") and 0.09 < len(val) / len(docs[0]) < 0.11


def test_batches_are_deterministic_windows(tmp_path, tok_dir, docs):
    (tmp_path / "a.txt").write_text(docs[0], encoding="utf-8")
    prepare([str(tmp_path / "a.txt")], str(tok_dir), str(tmp_path / "d"), val_fraction=0.0)
    data = TokenDataset(tmp_path / "d", "train")
    x, y = data.batch_at(7, 4, 32, seed=3)
    x2, y2 = data.batch_at(7, 4, 32, seed=3)
    assert x.shape == (4, 32) and (x == x2).all() and (y == y2).all()
    assert (x[:, 1:] == y[:, :-1]).all()
    assert not (data.batch_at(8, 4, 32, seed=3)[0] == x).all()
    windows = list(data.eval_batches(4, 32, max_batches=2))
    assert len(windows) == 2 and (windows[0][0][1, 0] == data.tokens[32])


@pytest.mark.parametrize("content,message", [
    (b"", "empty"), (b"abc\x00def", "binary"), (b"caf\xe9\n", "not UTF-8")])
def test_bad_text_is_a_data_error(tmp_path, tok_dir, content, message):
    (tmp_path / "bad.txt").write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare([str(tmp_path / "bad.txt")], str(tok_dir), str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_cli_refuses_overwrite_and_reports_one_line(tmp_path, tok_dir, docs):
    (tmp_path / "a.txt").write_text(docs[2] * 50, encoding="utf-8")

    out = tmp_path / "d"
    r = cocomix("data", "prepare", tmp_path / "a.txt", "--tokenizer", tok_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    before = (out / "train.bin").read_bytes()
    r = cocomix("data", "prepare", tmp_path / "a.txt", "--tokenizer", tok_dir, "--out", out)
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "train.bin").read_bytes() == before
    r = cocomix("data", "prepare", tmp_path / "missing.txt", "--tokenizer", tok_dir, "--out",
                tmp_path / "e")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_parquet_rows_are_documents_like_jsonl_lines(tmp_path, tok_dir, docs):
    """A Parquet column (any name, read in record batches) gives the shards the same documents
    give as JSONL lines; a folder of Parquet files reads them in name order."""
    import json

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [d for d in docs for _ in range(3)] + [""]  # an empty row is skipped, as in JSONL
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": r}) + "\n" for r in rows))
    folder = tmp_path / "pq"
    folder.mkdir()
    half = len(rows) // 2
    for name, part in (("0.parquet", rows[:half]), ("1.parquet", rows[half:])):
        pq.write_table(pa.table({"id": list(range(len(part))), "body": part}), folder / name,
                       row_group_size=2)
    import cocomix_mlx.text as text

    text.PARQUET_ROWS, old = 3, text.PARQUET_ROWS  # several record batches per file
    try:
        for src, out in ((tmp_path / "a.jsonl", "j"), (folder, "p")):
            prepare([str(src)], str(tok_dir), str(tmp_path / out), val_fraction=0.0,
                    text_field="body")
    finally:
        text.PARQUET_ROWS = old
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "j" / split).read_bytes() == (tmp_path / "p" / split).read_bytes()
    assert (tmp_path / "p" / "train.bin").stat().st_size > 0
    with pytest.raises(DataError, match="no column 'text'.*--text-field"):
        prepare([str(folder)], str(tok_dir), str(tmp_path / "x"))
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read .* as Parquet"):
        prepare([str(tmp_path / "fake.parquet")], str(tok_dir), str(tmp_path / "y"))


def test_max_tokens_stops_the_training_split_exactly(tmp_path, tok_dir, docs):
    (tmp_path / "a.txt").write_text("\n\n".join(docs) * 4, encoding="utf-8")
    full = prepare([str(tmp_path / "a.txt")], str(tok_dir), str(tmp_path / "full"),
                   val_fraction=0.0)
    cut = prepare([str(tmp_path / "a.txt")], str(tok_dir), str(tmp_path / "cut"),
                  val_fraction=0.0, max_tokens=1000)
    assert full["train_tokens"] > 1000 and cut["train_tokens"] == 1000
    whole = TokenDataset(tmp_path / "full", "train").tokens
    assert (TokenDataset(tmp_path / "cut", "train").tokens == whole[:1000]).all()
    with pytest.raises(DataError, match="--max-tokens"):
        prepare([str(tmp_path / "a.txt")], str(tok_dir), str(tmp_path / "bad"), max_tokens=-1)


def test_split_seed_holds_out_the_documents_hugging_face_would(tmp_path, tok_dir, docs):
    """With --split-seed the validation split is whole documents: those ``train_test_split(
    test_size, seed)`` of Hugging Face datasets puts in its test split — the first
    ceil(test_size · n) of NumPy's default_rng(seed).permutation(n) — across all inputs, in
    input order."""
    import json

    import numpy as np

    from cocomix_mlx.tokenizer import load_tokenizer

    rows = [f"Document number {i}. " + docs[i % len(docs)][:200] for i in range(40)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows[:25]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows[25:]))
    meta = prepare([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], str(tok_dir),
                   str(tmp_path / "d"), val_fraction=0.1, split_seed=2357)
    held = set(np.random.default_rng(2357).permutation(40)[:4].tolist())  # ceil(0.1 * 40)
    tok = load_tokenizer(tok_dir)

    def tokens(indices):
        return [t for i in indices for t in tok.encode(rows[i]) + [tok.eos_token_id]]

    val = TokenDataset(tmp_path / "d", "val").tokens.tolist()
    train = TokenDataset(tmp_path / "d", "train").tokens.tolist()
    assert val == tokens(sorted(held)) and meta["split_seed"] == 2357
    assert train == tokens([i for i in range(40) if i not in held])


CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
---
# A web-text sample
"""


def test_hf_dataset_subset_downloads_only_its_files_and_works_offline(tmp_path, tok_dir, docs,
                                                                      monkeypatch):
    """``--hf-dataset owner/name --hf-subset CONFIG`` against a Hub on 127.0.0.1: the subset's
    Parquet files (named by the card's ``configs``) give the shards their local copies give;
    HF_HUB_OFFLINE=1 then reads the cache; an unknown subset is one line naming the real ones."""
    import io
    import os
    import subprocess
    import sys

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from conftest import cocomix, fake_hub

    def parquet(rows):
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": rows}), buf)
        return buf.getvalue()

    sample = {"sample/10BT/000.parquet": parquet(docs[:2]), "sample/10BT/001.parquet":
              parquet(docs[2:] * 2)}
    files = {"README.md": CARD.encode(), "data/0.parquet": parquet(["other text " * 50]),
             **sample}
    local = tmp_path / "local"
    for name, blob in sample.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(blob)
    endpoint, stop = fake_hub(files)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    args = ["data", "prepare", "--tokenizer", tok_dir, "--val-fraction", "0"]
    try:
        r = cocomix(*args, "--hf-dataset", "me/web", "--hf-subset", "sample-10BT", "--out",
                    tmp_path / "hub")
        assert r.returncode == 0, r.stderr
        r = cocomix(*args, "--hf-dataset", "me/web", "--hf-subset", "nope", "--out", tmp_path / "x")
        assert r.returncode == 2 and "its subsets: default, sample-10BT" in r.stderr, r.stderr
        lazy = {**os.environ, "HF_HOME": str(tmp_path / "hf_lazy")}
        r = subprocess.run([sys.executable, "-m", "cocomix_mlx.cli.app", *map(str, args),
                            "--hf-dataset", "me/web", "--hf-subset", "sample-10BT",
                            "--max-tokens", "50", "--out", tmp_path / "few"],
                           capture_output=True, text=True, env=lazy, timeout=600)
        assert r.returncode == 0, r.stderr
        fetched = [p.name for p in (tmp_path / "hf_lazy").rglob("*.parquet")]
        assert fetched == ["000.parquet"]  # the second file was never needed
    finally:
        stop()
    assert cocomix(*args, local, "--out", tmp_path / "local_d").returncode == 0
    hub = (tmp_path / "hub" / "train.bin").read_bytes()
    assert hub == (tmp_path / "local_d" / "train.bin").read_bytes() and len(hub) > 1000
    cached = list((tmp_path / "hf_home").rglob("*.parquet"))
    assert cached and all("sample" in str(p) for p in cached)  # only the subset's files
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cocomix(*args, "--hf-dataset", "me/web", "--hf-subset", "sample-10BT", "--out",
                tmp_path / "offline")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "offline" / "train.bin").read_bytes() == hub
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))  # offline, nothing cached
    r = cocomix(*args, "--hf-dataset", "me/web", "--out", tmp_path / "none")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "offline" in lines[0], r.stderr


def test_interrupted_hub_downloads_resume(tmp_path, tok_dir, docs, monkeypatch):
    """A connection that drops in the middle of a file is resumed from the bytes already
    received (a ``Range`` request); a run that gives up keeps the files it finished, and the
    next run downloads only the rest. Both give the shards of the local files."""
    import io

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from conftest import fake_hub

    def parquet(rows, padding=0):  # another column of incompressible bytes sets the size
        blobs = [np.random.default_rng(0).bytes(padding // len(rows)) for _ in rows]
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": rows, "blob": blobs}), buf, compression="none")
        return buf.getvalue()

    # huggingface-hub keeps what it received in 10 MB chunks: the file is larger than two
    data = {"data/0.parquet": parquet(docs[:2]), "data/1.parquet": parquet(docs[2:], 24 << 20)}
    local = tmp_path / "local"
    local.mkdir()
    for name, blob in data.items():
        (local / name.split("/")[1]).write_bytes(blob)
    args = ["data", "prepare", "--tokenizer", tok_dir, "--val-fraction", "0"]
    assert cocomix(*args, local, "--out", tmp_path / "want").returncode == 0
    want = (tmp_path / "want" / "train.bin").read_bytes()
    cut, log = {"data/1.parquet": 1}, []
    endpoint, stop = fake_hub({"README.md": CARD.encode(), **data}, cut=cut, log=log)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    hub = ["--hf-dataset", "me/web"]
    try:
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home1"))
        r = cocomix(*args, *hub, "--out", tmp_path / "resumed")
        assert r.returncode == 0, r.stderr
        tries = [x[1] for x in log if x[0] == "data/1.parquet"]
        assert len(tries) == 2 and tries[0] is None and tries[1].startswith("bytes=")
        assert int(tries[1][6:-1]) >= 10 << 20  # resumed past what the first try received
        assert (tmp_path / "resumed" / "train.bin").read_bytes() == want

        monkeypatch.setenv("HF_HOME", str(tmp_path / "home2"))
        cut["data/1.parquet"] = 100  # the connection always drops: the run gives up
        r = cocomix(*args, *hub, "--out", tmp_path / "failed")
        lines = r.stderr.strip().splitlines()  # the Hub client's retries, then one error
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert [x for x in lines if x.startswith("error:")] == lines[-1:]
        assert "me/web" in lines[-1] and "again to resume" in lines[-1]
        assert not (tmp_path / "failed").exists()
        cut["data/1.parquet"] = 0
        log.clear()
        r = cocomix(*args, *hub, "--out", tmp_path / "again")
        assert r.returncode == 0, r.stderr
        assert [x[0] for x in log] == ["data/1.parquet"]  # data/0 came from the cache
        assert (tmp_path / "again" / "train.bin").read_bytes() == want
    finally:
        stop()


def test_parquet_is_read_in_bounded_memory(tmp_path, tok_dir):
    """Preparing a Parquet file of 32 MB of text, the Arrow reader never holds more than 12 MB
    (the budget; its memory pool's peak): rows stream through the tokenizer in record
    batches, never the whole file. Python-side memory is bounded by the same batches
    (``text.PARQUET_ROWS`` rows, ``data.BATCH_CHARS`` characters)."""
    import subprocess
    import sys

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    text = english_text(1 << 20)
    rows = [text[i:i + 2048] for i in range(0, len(text) - 2048, 2048)]
    n_rows = (32 << 20) // 2048
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": (rows * (n_rows // len(rows) + 1))[:n_rows]}), path,
                   row_group_size=512)
    code = ("import pyarrow as pa\nfrom cocomix_mlx.data import prepare\n"
            f"prepare([{str(path)!r}], {str(tok_dir)!r}, {str(tmp_path / 'out')!r}, "
            "val_fraction=0.01)\nprint(pa.default_memory_pool().max_memory())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peak = int(r.stdout.split()[-1])
    assert 0 < peak < 12 << 20, peak  # pre-buffered: 23 MB; the whole table: 52 MB
    assert (tmp_path / "out" / "train.bin").stat().st_size > 2 * (30 << 20) // 4
