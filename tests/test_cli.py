"""The command line's usage errors: one line on stderr, exit 2, and where to read the help —
never a traceback (typer raises them from its own copy of click)."""

import pytest

from conftest import cocomix

USAGE_ERRORS = [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["--bogus"], "No such option: --bogus"),
    (["generate", "--model", "m", "--prompt", "a", "--max-tokens", "abc"], "--max-tokens"),
    (["pretrain"], "Missing option '--data'"),
    (["sae", "train", "--teacher"], "requires an argument"),
    (["labels", "build", "--k-attr", "x", "--teacher", "t"], "valid integer"),
]


@pytest.mark.parametrize("args,expected", USAGE_ERRORS)
def test_usage_errors_are_one_line_with_exit_2(args, expected):
    r = cocomix(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], r.stderr
    assert "--help" in lines[0] and "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("args", [[], ["sae"], ["data"]])
def test_a_bare_command_group_prints_its_help(args):
    r = cocomix(*args)
    assert r.returncode == 0 and "Usage:" in r.stdout and r.stderr == ""


BAD_VALUES = [
    (["pretrain", "--data", "{data}", "--out", "{out}", "--steps", "-5"], "train.steps must be"),
    (["pretrain", "--data", "{data}", "--out", "{out}", "--lr", "-1"], "train.lr must be"),
    (["pretrain", "--data", "{data}", "--out", "{out}", "--batch-size", "0"], "train.batch_size"),
    (["pretrain", "--data", "{data}", "--out", "{out}", "--grad-accum", "0"], "train.grad_accum"),
    (["pretrain", "--data", "{data}", "--out", "{out}", "--seq-len", "0"], "train.seq_len"),
    (["pretrain", "--data", "{data}", "--out", "{out}", "--log-every", "0"], "train.log_every"),
    (["pretrain", "--data", "{data}", "--out", "{out}", "--seed", "-1"], "train.seed"),
    (["pretrain", "--data", "{data}", "--out", "{out}", "--n-head", "7"], "must divide"),
    (["generate", "--model", "{model}", "--prompt", "The", "--temp", "-1"], "--temp -1.0"),
    (["generate", "--model", "{model}", "--prompt", "The", "--top-p", "2"], "--top-p 2.0"),
    (["generate", "--model", "{model}", "--prompt", "The", "--top-k", "-5"], "--top-k -5"),
    (["generate", "--model", "{model}", "--prompt", "The", "--min-p", "5"], "--min-p 5.0"),
    (["generate", "--model", "{model}", "--prompt", "The", "--repetition-penalty", "-1"],
     "--repetition-penalty -1.0"),
    (["concepts", "The sea", "--model", "{model}", "--top", "-3"], "--top must be"),
    (["eval", "ppl", "--model", "{model}", "--data", "{data}", "--batch-size", "0"],
     "--batch-size must be positive"),
]


@pytest.mark.parametrize("args,expected", BAD_VALUES)
def test_bad_values_are_one_line_errors_and_write_nothing(args, expected, tmp_path):
    from pathlib import Path

    from cocomix_mlx.data import prepare

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    (tmp_path / "t.txt").write_text("The sea was calm and the ship sailed on. " * 400)
    prepare([str(tmp_path / "t.txt")], str(root / "weights" / "cocomix"), str(data),
            val_fraction=0.1)
    fill = {"data": data, "out": tmp_path / "run", "model": root / "weights" / "cocomix"}
    r = cocomix(*(a.format(**fill) for a in args))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and expected in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_error_text_is_printed_as_it_is(tmp_path):
    """A path with [brackets] keeps them (no rich markup), and a user string with a closing
    tag cannot break the printer."""
    for name in ("in[red]dir", "x[/b]y"):
        r = cocomix("eval", "ppl", "--model", tmp_path / name, "--data", tmp_path / "nodata")
        assert r.returncode == 2 and name in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_data_prepare_never_writes_over_its_own_input(tmp_path):
    """`data prepare DIR --out DIR --force` would delete the corpus it reads."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The sea was calm. " * 200)
    for out in (corpus, tmp_path):
        r = cocomix("data", "prepare", corpus, "--tokenizer", root / "weights" / "cocomix",
                    "--out", out, "--force")
        assert r.returncode == 2 and "the input" in r.stderr, r.stderr
    assert (corpus / "a.txt").read_text().startswith("The sea")


def test_corrupt_inputs_are_one_line_errors(tmp_path):
    """Metadata that is valid JSON of the wrong shape, a shard with a torn token, a text file
    posing as safetensors, and a metrics log with a torn last line."""
    import json
    import shutil
    from pathlib import Path

    from cocomix_mlx.data import prepare

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "t.txt").write_text("The sea was calm and the ship sailed on. " * 400)
    good = tmp_path / "data"
    prepare([str(tmp_path / "t.txt")], str(root / "weights" / "cocomix"), str(good),
            val_fraction=0.1)

    def broken(name, edit):
        d = tmp_path / name
        shutil.copytree(good if name.startswith("data") else root / "weights" / "cocomix", d)
        edit(d)
        return d

    cases = [
        (["eval", "ppl", "--model", root / "weights" / "cocomix", "--data",
          broken("data-list", lambda d: (d / "meta.json").write_text("[1, 2]"))],
         "not the meta.json"),
        (["eval", "ppl", "--model", root / "weights" / "cocomix", "--data",
          broken("data-odd", lambda d: (d / "val.bin").write_bytes(
              (d / "val.bin").read_bytes() + b"\0"))], "not a whole number"),
        (["eval", "ppl", "--model", broken("model-list", lambda d: (d / "config.json")
                                           .write_text("[]")), "--data", good],
         "expected a JSON object"),
        (["eval", "ppl", "--model", broken("model-text", lambda d: (d / "model.safetensors")
                                           .write_text("just some text\n" * 100)),
          "--data", good], "cannot load"),
    ]
    sae = tmp_path / "sae"
    shutil.copytree(root / "weights" / "sae", sae)
    (sae / "config.json").write_text(json.dumps([{"d": 128}]))
    cases.append((["sae", "eval", "--sae", sae, "--teacher", root / "weights" / "teacher",
                   "--data", good], "corrupt SAE"))
    for args, expected in cases:
        r = cocomix(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, r.stderr)


def test_resume_survives_a_torn_last_metrics_line(tmp_path):
    from cocomix_mlx.rundir import RunDirectory

    run = RunDirectory(tmp_path)
    run.log({"step": 1, "loss": 2.0})
    run.log({"step": 2, "loss": 1.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # the process died mid-write
    run.truncate(2)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [
        '{"step": 1, "loss": 2.0}', '{"step": 2, "loss": 1.5}']


def test_corrupt_or_truncated_gzip_text_is_a_one_line_error(tmp_path):
    import gzip
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    whole = gzip.compress(("The sea was calm. " * 3000).encode())
    docs = gzip.compress(b"".join(b'{"text": "The sea was calm."}\n' for _ in range(3000)))
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    for name, data in (("two.txt.gz", whole[:2]), ("flipped.txt.gz", bytes(flipped)),
                       ("cut.txt.gz", whole[: len(whole) // 2]),
                       ("cut.jsonl.gz", docs[: len(docs) // 2])):
        (tmp_path / name).write_bytes(data)
        r = cocomix("data", "prepare", tmp_path / name, "--tokenizer", root / "weights" / "cocomix",
                    "--out", tmp_path / f"out-{name}")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "corrupt or truncated" in lines[0], \
            (name, r.stderr)
        assert not (tmp_path / f"out-{name}").exists()
