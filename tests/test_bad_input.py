"""An adversarial battery over every command: each bad input exits 2 with exactly one line on
stderr (``error: ...``, no traceback) and leaves everything on disk as it was.

The commands run in this process (``cli.app.main`` with ``sys.argv`` set) so that a hundred
cases cost seconds; ``tests/test_cli.py`` runs the same entry point in subprocesses. A
``warning:`` line (the slow-BLAS hint of long commands) is not an error line and is not
counted.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from conftest import english_text

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``cocomix ARGS`` in this process: (exit status, stdout, stderr)."""
    from cocomix_mlx.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["cocomix", *map(str, args)]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # anything escaping main() is what a user would see as a crash
        code, err = -1, io.StringIO(err.getvalue() + f"Traceback (escaped main): {e!r}")
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root``, with size and modification time for files (a directory whose
    entries came and went is unchanged)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            state[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
    return state


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: shipped checkpoints, prepared data, a finished 2-step run, and files that
    are broken in every way the cases need."""
    from cocomix_mlx.config import preset
    from cocomix_mlx.data import prepare
    from cocomix_mlx.runs import make_run

    w = tmp_path_factory.mktemp("ws")
    for name in ("cocomix", "ntp", "teacher", "sae"):
        shutil.copytree(ROOT / "weights" / name, w / name)
    (w / "t.txt").write_text(english_text(60_000), encoding="utf-8")
    prepare([str(w / "t.txt")], str(w / "cocomix"), str(w / "data"), val_fraction=0.1)
    cfg = preset("tiny")
    m, t = cfg.model, cfg.train
    m.n_embd, m.n_layer, m.n_head, m.n_positions, m.vocab_size = 32, 2, 2, 64, 4096
    t.seq_len, t.batch_size, t.steps, t.eval_every, t.save_every, t.log_every = 32, 2, 2, 0, 2, 1
    make_run(cfg, w / "data", w / "run").train()
    (w / "existing").mkdir()
    (w / "existing" / "keep.txt").write_text("mine")
    (w / "plain.txt").write_text("a regular file\n")
    (w / "empty.txt").write_text("")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (w / "bad.toml").write_text("[train\nlr = = 3\n")
    (w / "section.toml").write_text("[bogus]\nx = 1\n")
    (w / "types.toml").write_text("[train]\nsteps = \"many\"\n")
    (w / "bad.gz").write_bytes(gzip.compress(b"The sea was calm. " * 100)[:40])
    (w / "fake.pt").write_text("not a pickle\n")
    (w / "fake.gguf").write_text("GGUF? no\n")
    tasks = {"ok": {"context": "The sea", "choices": [" was", " is"], "gold": 0},
             "string": {"context": "The sea", "choices": "was", "gold": 0},
             "strgold": {"context": "The sea", "choices": [" was", " is"], "gold": "0"},
             "boolgold": {"context": "The sea", "choices": [" was", " is"], "gold": True},
             "range": {"context": "The sea", "choices": [" was", " is"], "gold": 5},
             "nochoice": {"context": "The sea", "choices": [], "gold": 0}}
    for name, row in tasks.items():
        (w / f"mc-{name}.jsonl").write_text(json.dumps(row) + "\n")
    (w / "mc-torn.jsonl").write_text('{"context": "The sea", "choi\n')
    (w / "concepts-bad.json").write_text("[1, 2, 3]")
    nometa = w / "nometa"
    shutil.copytree(w / "data", nometa)
    (nometa / "meta.json").unlink()
    noweights = w / "noweights"
    shutil.copytree(w / "ntp", noweights)
    (noweights / "model.safetensors").unlink()
    notok = w / "notok"
    shutil.copytree(w / "ntp", notok)
    for f in notok.glob("tokenizer*"):
        f.unlink()
    return w


LONG = "the sea " * 400  # past every shipped model's 128 positions

CASES = [
    # pretrain
    ("pretrain-no-data", ["pretrain", "--data", "{w}/nodata", "--out", "{w}/new"], "nodata"),
    ("pretrain-data-is-file", ["pretrain", "--data", "{w}/plain.txt", "--out", "{w}/new"], None),
    ("pretrain-data-no-meta", ["pretrain", "--data", "{w}/nometa", "--out", "{w}/new"], None),
    ("pretrain-out-exists", ["pretrain", "--data", "{w}/data", "--out", "{w}/existing"],
     "--force"),
    ("pretrain-out-under-file", ["pretrain", "--data", "{w}/data", "--out", "{w}/plain.txt/run",
                                 "--steps", "2"], None),
    ("pretrain-config-missing", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                 "--config", "{w}/none.toml"], "not found"),
    ("pretrain-config-garbled", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                 "--config", "{w}/bad.toml"], "cannot parse"),
    ("pretrain-config-section", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                 "--config", "{w}/section.toml"], "bogus"),
    ("pretrain-config-type", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                              "--config", "{w}/types.toml"], "steps"),
    ("pretrain-preset-and-config", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                    "--preset", "tiny", "--config", "{w}/bad.toml"], "either"),
    ("pretrain-preset-unknown", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                 "--preset", "huge"], "huge"),
    ("pretrain-mode-unknown", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                               "--mode", "magic"], "magic"),
    ("pretrain-resume-nothing", ["pretrain", "--data", "{w}/data", "--out", "{w}/existing",
                                 "--resume"], None),
    ("pretrain-resume-and-force", ["pretrain", "--data", "{w}/data", "--out", "{w}/run",
                                   "--resume", "--force"], None),
    ("pretrain-key-unknown", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                              "--model.bogus", "3"], "bogus"),
    ("pretrain-key-type", ["pretrain", "--data", "{w}/data", "--out", "{w}/new", "--lr", "abc"],
     "abc"),
    ("pretrain-key-no-value", ["pretrain", "--data", "{w}/data", "--out", "{w}/new", "--lr"],
     "--lr"),
    ("pretrain-stray-argument", ["pretrain", "--data", "{w}/data", "--out", "{w}/new", "oops"],
     "oops"),
    ("pretrain-cocomix-no-sae", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                 "--mode", "cocomix"], None),
    ("pretrain-kd-no-teacher", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                "--mode", "kd"], "teacher"),
    ("pretrain-teacher-missing", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                  "--mode", "kd", "--teacher", "{w}/noteacher"], "noteacher"),
    ("pretrain-labels-missing", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                 "--labels", "{w}/nostore"], None),
    ("pretrain-dropout", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                          "--dropout", "1.5"], "dropout"),
    ("pretrain-positions", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                            "--n-positions", "0"], "n_positions"),
    ("pretrain-lam", ["pretrain", "--data", "{w}/data", "--out", "{w}/new", "--lam", "-1"],
     "lam"),
    ("pretrain-lr-inf", ["pretrain", "--data", "{w}/data", "--out", "{w}/new", "--lr", "inf"],
     "lr"),
    ("pretrain-seq-past-context", ["pretrain", "--data", "{w}/data", "--out", "{w}/new",
                                   "--seq-len", "512", "--n-positions", "256"], None),
    ("pretrain-out-is-data", ["pretrain", "--data", "{w}/data", "--out", "{w}/data", "--force"],
     "is the input"),
    ("pretrain-out-holds-data", ["pretrain", "--data", "{w}/data", "--out", "{w}", "--force"],
     "holds the input"),
    ("pretrain-resume-nan-lr", ["pretrain", "--data", "{w}/data", "--out", "{w}/run",
                                "--resume", "--lr", "nan"], "train.lr"),
    # generate
    ("generate-no-model", ["generate", "--model", "{w}/nomodel", "--prompt", "The"], "nomodel"),
    ("generate-no-weights", ["generate", "--model", "{w}/noweights", "--prompt", "The"], None),
    ("generate-no-tokenizer", ["generate", "--model", "{w}/notok", "--prompt", "The"],
     "tokenizer"),
    ("generate-model-is-file", ["generate", "--model", "{w}/plain.txt", "--prompt", "The"], None),
    ("generate-empty-prompt", ["generate", "--model", "{w}/ntp", "--prompt", ""], "empty"),
    ("generate-prompt-too-long", ["generate", "--model", "{w}/ntp", "--prompt", LONG], None),
    ("generate-past-context", ["generate", "--model", "{w}/cocomix", "--prompt", "The",
                               "--max-tokens", "1000"], None),
    ("generate-negative-tokens", ["generate", "--model", "{w}/ntp", "--prompt", "The",
                                  "--max-tokens", "-4"], None),
    ("generate-temp-nan", ["generate", "--model", "{w}/ntp", "--prompt", "The", "--temp",
                           "nan"], None),
    ("generate-steer-ntp", ["generate", "--model", "{w}/ntp", "--prompt", "The", "--steer",
                            "3=5"], None),
    ("generate-steer-format", ["generate", "--model", "{w}/cocomix", "--prompt", "The",
                               "--steer", "sea"], None),
    ("generate-steer-name", ["generate", "--model", "{w}/cocomix", "--prompt", "The",
                             "--steer", "no such concept=4"], None),
    ("generate-steer-index", ["generate", "--model", "{w}/cocomix", "--prompt", "The",
                              "--steer", "999999=4"], None),
    ("generate-steer-alpha", ["generate", "--model", "{w}/cocomix", "--prompt", "The",
                              "--steer", "3=1e9"], None),
    ("generate-steer-span", ["generate", "--model", "{w}/cocomix", "--prompt", "The",
                             "--steer", "3=4", "--span", "sideways"], None),
    ("generate-sae-width", ["generate", "--model", "{w}/ntp", "--prompt", "The", "--sae",
                            "{w}/sae", "--layer", "1", "--steer", "3=4"], None),
    ("generate-sae-layer", ["generate", "--model", "{w}/teacher", "--prompt", "The", "--sae",
                            "{w}/sae", "--layer", "99", "--steer", "3=4"], None),
    ("generate-concepts-bad", ["generate", "--model", "{w}/cocomix", "--prompt", "The",
                               "--concepts", "{w}/concepts-bad.json", "--steer", "sea=4"], None),
    ("generate-top-k-past-vocab", ["generate", "--model", "{w}/ntp", "--prompt", "The",
                                   "--top-k", "100000", "--temp", "1"], "top-k"),
    ("generate-negative-seed", ["generate", "--model", "{w}/ntp", "--prompt", "The", "--seed",
                                "-1", "--temp", "1"], "seed"),
    # concepts
    ("concepts-ntp", ["concepts", "The sea", "--model", "{w}/ntp"], None),
    ("concepts-sae-width", ["concepts", "The sea", "--model", "{w}/ntp", "--sae", "{w}/sae"],
     "width"),
    ("concepts-sae-layer", ["concepts", "The sea", "--model", "{w}/teacher", "--sae", "{w}/sae",
                            "--layer", "99"], None),
    # serve
    ("serve-no-model", ["serve", "--model", "{w}/nomodel"], "nomodel"),
    ("serve-port", ["serve", "--model", "{w}/ntp", "--port", "70000"], "port"),
    ("serve-bad-host", ["serve", "--model", "{w}/ntp", "--host", "no.such.host.invalid"],
     "listen"),
    ("serve-concepts-bad", ["serve", "--model", "{w}/cocomix", "--concepts",
                            "{w}/concepts-bad.json"], None),
    ("serve-sae-width", ["serve", "--model", "{w}/ntp", "--sae", "{w}/sae"], "width"),
    ("concepts-empty", ["concepts", "", "--model", "{w}/cocomix"], None),
    ("concepts-top-zero", ["concepts", "The sea", "--model", "{w}/cocomix", "--top", "0"],
     "--top"),
    ("concepts-too-long", ["concepts", LONG, "--model", "{w}/cocomix"], None),
    ("concepts-no-model", ["concepts", "The sea", "--model", "{w}/nomodel"], None),
    # quantize
    ("quantize-no-src", ["quantize", "{w}/nomodel", "{w}/q"], None),
    ("quantize-out-exists", ["quantize", "{w}/ntp", "{w}/existing"], "--force"),
    ("quantize-bits", ["quantize", "{w}/ntp", "{w}/q", "--bits", "7"], None),
    ("quantize-group", ["quantize", "{w}/ntp", "{w}/q", "--q-group-size", "48"], None),
    ("quantize-onto-itself", ["quantize", "{w}/ntp", "{w}/ntp", "--force"], "is the input"),
    ("quantize-over-parent", ["quantize", "{w}/ntp", "{w}", "--force"], "holds the input"),
    # plot
    ("plot-no-metrics", ["plot", "{w}/existing", "--out", "{w}/p.png"], None),
    ("plot-out-exists", ["plot", "{w}/run", "--out", "{w}/plain.txt"], None),
    ("plot-out-suffix", ["plot", "{w}/run", "--out", "{w}/p.txt"], None),
    ("plot-smooth", ["plot", "{w}/run", "--out", "{w}/p.png", "--smooth", "-3"], "--smooth"),
    # tokenizer train
    ("tokenizer-no-input", ["tokenizer", "train", "{w}/none.txt", "--out", "{w}/tok"], None),
    ("tokenizer-empty-input", ["tokenizer", "train", "{w}/empty.txt", "--out", "{w}/tok"], None),
    ("tokenizer-vocab", ["tokenizer", "train", "{w}/t.txt", "--out", "{w}/tok", "--vocab-size",
                         "0"], None),
    ("tokenizer-out-exists", ["tokenizer", "train", "{w}/t.txt", "--out", "{w}/existing"],
     "--force"),
    ("tokenizer-corrupt-gz", ["tokenizer", "train", "{w}/bad.gz", "--out", "{w}/tok"], None),
    # data prepare
    ("data-no-input", ["data", "prepare", "{w}/none.txt", "--tokenizer", "{w}/ntp", "--out",
                       "{w}/d"], None),
    ("data-no-tokenizer", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/existing",
                           "--out", "{w}/d"], None),
    ("data-out-exists", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/ntp", "--out",
                         "{w}/existing"], "--force"),
    ("data-val-fraction", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/ntp", "--out",
                           "{w}/d", "--val-fraction", "1.5"], None),
    ("data-val-negative", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/ntp", "--out",
                           "{w}/d", "--val-fraction", "-0.1"], None),
    ("data-empty", ["data", "prepare", "{w}/empty.txt", "--tokenizer", "{w}/ntp", "--out",
                    "{w}/d"], None),
    ("data-corrupt-gz", ["data", "prepare", "{w}/bad.gz", "--tokenizer", "{w}/ntp", "--out",
                         "{w}/d"], None),
    ("data-out-is-input", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/ntp", "--out",
                           "{w}", "--force"], None),
    ("data-nothing-to-read", ["data", "prepare", "--tokenizer", "{w}/ntp", "--out", "{w}/d"],
     "--hf-dataset"),
    ("data-files-and-hub", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/ntp", "--out",
                            "{w}/d", "--hf-dataset", "me/web"], "one of them"),
    ("data-subset-alone", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/ntp", "--out",
                           "{w}/d", "--hf-subset", "sample-10BT"], "--hf-dataset"),
    ("data-hub-id", ["data", "prepare", "--hf-dataset", "not a repo", "--tokenizer", "{w}/ntp",
                     "--out", "{w}/d"], "owner/name"),
    ("data-max-tokens", ["data", "prepare", "{w}/t.txt", "--tokenizer", "{w}/ntp", "--out",
                         "{w}/d", "--max-tokens", "-1"], "--max-tokens"),
    ("data-text-field", ["data", "prepare", "{w}/mc-ok.jsonl", "--tokenizer", "{w}/ntp", "--out",
                         "{w}/d", "--text-field", "body"], "--text-field"),
    # eval
    ("harness-include", ["eval", "harness", "--model", "{w}/ntp", "--include", "{w}/none"],
     "--include"),
    ("harness-compare", ["eval", "harness", "--model", "{w}/ntp", "--compare", "{w}/none"],
     "no checkpoint"),
    ("ppl-blocks-one", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/data", "--blocks",
                        "1"], "--blocks"),
    ("ppl-blocks-and-seq", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/data",
                            "--blocks", "64", "--seq-len", "32"], "not both"),
    ("ppl-blocks-past-context", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/data",
                                 "--blocks", "4096"], "--blocks"),
    ("ppl-no-model", ["eval", "ppl", "--model", "{w}/nomodel", "--data", "{w}/data"], None),
    ("ppl-no-data", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/nodata"], None),
    ("ppl-split", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/data", "--split", "test"],
     None),
    ("ppl-seq-len", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/data", "--seq-len",
                     "-4"], None),
    ("ppl-seq-past-context", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/data",
                              "--seq-len", "4096"], None),
    ("ppl-max-batches", ["eval", "ppl", "--model", "{w}/ntp", "--data", "{w}/data",
                         "--max-batches", "-1"], None),
    ("mc-no-file", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/none.jsonl"], None),
    ("mc-choices-string", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/mc-string.jsonl"],
     "mc-string.jsonl:1"),
    ("mc-gold-string", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/mc-strgold.jsonl"],
     None),
    ("mc-gold-bool", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/mc-boolgold.jsonl"],
     None),
    ("mc-gold-range", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/mc-range.jsonl"],
     None),
    ("mc-no-choices", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/mc-nochoice.jsonl"],
     None),
    ("mc-torn", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/mc-torn.jsonl"], None),
    ("mc-empty", ["eval", "mc", "--model", "{w}/ntp", "--tasks", "{w}/empty.txt"], None),
    ("lambada-no-text", ["eval", "lambada", "--model", "{w}/ntp", "--text", "{w}/none.txt"], None),
    ("lambada-n", ["eval", "lambada", "--model", "{w}/ntp", "--text", "{w}/t.txt", "--n", "0"],
     "--n"),
    ("lambada-empty", ["eval", "lambada", "--model", "{w}/ntp", "--text", "{w}/empty.txt"], None),
    # sae
    ("sae-train-no-teacher", ["sae", "train", "--teacher", "{w}/noteacher", "--data", "{w}/data",
                              "--out", "{w}/s"], None),
    ("sae-train-layer", ["sae", "train", "--teacher", "{w}/teacher", "--layer", "99", "--data",
                         "{w}/data", "--out", "{w}/s"], None),
    ("sae-train-k", ["sae", "train", "--teacher", "{w}/teacher", "--layer", "1", "--data",
                     "{w}/data", "--out", "{w}/s", "--k", "0"], None),
    ("sae-train-k-over-latents", ["sae", "train", "--teacher", "{w}/teacher", "--layer", "1",
                                  "--data", "{w}/data", "--out", "{w}/s", "--latents", "16",
                                  "--k", "32"], None),
    ("sae-train-out-exists", ["sae", "train", "--teacher", "{w}/teacher", "--layer", "1",
                              "--data", "{w}/data", "--out", "{w}/existing"], "--force"),
    ("sae-train-lr", ["sae", "train", "--teacher", "{w}/teacher", "--layer", "1", "--data",
                      "{w}/data", "--out", "{w}/s", "--lr", "-1"], "--lr"),
    ("sae-train-lr-decay", ["sae", "train", "--teacher", "{w}/teacher", "--layer", "1", "--data",
                            "{w}/data", "--out", "{w}/s", "--lr-decay", "2"], "--lr-decay"),
    ("sae-train-out-is-data", ["sae", "train", "--teacher", "{w}/teacher", "--layer", "1",
                               "--data", "{w}/data", "--out", "{w}/data", "--force"],
     "is the input"),
    ("sae-eval-no-sae", ["sae", "eval", "--sae", "{w}/nosae", "--teacher", "{w}/teacher",
                         "--data", "{w}/data"], None),
    ("sae-eval-width", ["sae", "eval", "--sae", "{w}/sae", "--teacher", "{w}/ntp", "--data",
                        "{w}/data", "--layer", "1"], None),
    ("sae-eval-batches", ["sae", "eval", "--sae", "{w}/sae", "--teacher", "{w}/teacher",
                          "--data", "{w}/data", "--batches", "0"], "--batches"),
    ("sae-describe-onto-sae", ["sae", "describe", "--sae", "{w}/sae", "--teacher", "{w}/teacher",
                               "--data", "{w}/data", "--out", "{w}/sae", "--force"],
     "is the input"),
    ("sae-describe-out-exists", ["sae", "describe", "--sae", "{w}/sae", "--teacher",
                                 "{w}/teacher", "--data", "{w}/data", "--out",
                                 "{w}/plain.txt"], None),
    ("sae-describe-no-data", ["sae", "describe", "--sae", "{w}/sae", "--teacher", "{w}/teacher",
                              "--data", "{w}/nodata", "--out", "{w}/c.json"], None),
    # labels
    ("labels-no-teacher", ["labels", "build", "--teacher", "{w}/noteacher", "--sae", "{w}/sae",
                           "--data", "{w}/data", "--out", "{w}/l"], None),
    ("labels-no-sae", ["labels", "build", "--teacher", "{w}/teacher", "--sae", "{w}/nosae",
                       "--data", "{w}/data", "--out", "{w}/l"], None),
    ("labels-out-exists", ["labels", "build", "--teacher", "{w}/teacher", "--sae", "{w}/sae",
                           "--data", "{w}/data", "--out", "{w}/existing"], "--force"),
    ("labels-k-attr", ["labels", "build", "--teacher", "{w}/teacher", "--sae", "{w}/sae",
                       "--data", "{w}/data", "--out", "{w}/l", "--k-attr", "0"], None),
    ("labels-kind", ["labels", "build", "--teacher", "{w}/teacher", "--sae", "{w}/sae",
                     "--data", "{w}/data", "--out", "{w}/l", "--labels", "vibes"], None),
    ("labels-window", ["labels", "build", "--teacher", "{w}/teacher", "--sae", "{w}/sae",
                       "--data", "{w}/data", "--out", "{w}/l", "--window", "5000"], None),
    ("labels-inspect-no-store", ["labels", "inspect", "{w}/nostore", "--data", "{w}/data"], None),
    # convert / export / teacher
    ("convert-gpt2-no-src", ["convert", "gpt2", "{w}/nosrc", "{w}/c"], None),
    ("convert-gpt2-empty-dir", ["convert", "gpt2", "{w}/existing", "{w}/c"], None),
    ("convert-gpt2-out-exists", ["convert", "gpt2", "{w}/ntp", "{w}/existing"], None),
    ("convert-gpt2-onto-src", ["convert", "gpt2", "{w}/ntp", "{w}/ntp", "--force"],
     "is the input"),
    ("export-gpt2-onto-src", ["export", "gpt2", "{w}/ntp", "{w}/ntp", "--force"], "is the input"),
    ("labels-out-is-data", ["labels", "build", "--teacher", "{w}/teacher", "--sae", "{w}/sae",
                            "--data", "{w}/data", "--out", "{w}/data", "--force"], "is the input"),
    ("tokenizer-onto-input", ["tokenizer", "train", "{w}/ntp", "--out", "{w}/ntp", "--force"],
     "is the input"),
    ("convert-gpt2-dtype", ["convert", "gpt2", "{w}/ntp", "{w}/c", "--dtype", "float8"], None),
    ("convert-cocomix-no-yaml", ["convert", "cocomix", "{w}/existing", "{w}/c"], None),
    ("convert-sae-fake-pt", ["convert", "sae", "{w}/fake.pt", "{w}/c"], None),
    ("convert-sae-one-path", ["convert", "sae", "{w}/fake.pt"], None),
    ("convert-gguf-fake", ["convert", "gguf", "{w}/fake.gguf", "{w}/c"], None),
    ("convert-gguf-missing", ["convert", "gguf", "{w}/none.gguf", "{w}/c"], None),
    ("export-gpt2-of-cocomix", ["export", "gpt2", "{w}/cocomix", "{w}/e"], None),
    ("export-cocomix-of-ntp", ["export", "cocomix", "{w}/ntp", "{w}/e"], None),
    ("export-gpt2-out-exists", ["export", "gpt2", "{w}/ntp", "{w}/existing"], "--force"),
    ("teacher-out-exists", ["teacher", "smollm2", "{w}/existing"], None),
    ("teacher-dtype", ["teacher", "smollm2", "{w}/sm", "--dtype", "int3"], None),
    # usage
    ("usage-unknown-command", ["frobnicate"], "frobnicate"),
    ("usage-unknown-option", ["doctor", "--bogus"], "--bogus"),
    ("usage-missing-option", ["sae", "eval", "--sae", "{w}/sae"], "Missing"),
    ("usage-bad-int", ["generate", "--model", "{w}/ntp", "--prompt", "a", "--max-tokens", "x"],
     "--max-tokens"),
    ("quickstart-out-is-file", ["quickstart", "--out", "{w}/plain.txt"], None),
    ("quickstart-steps", ["quickstart", "--out", "{w}/q", "--steps", "0"], "--steps"),
    ("quickstart-alpha", ["quickstart", "--out", "{w}/q", "--alpha", "nan"], "--alpha"),
]


def test_the_battery_is_large_and_covers_every_command():
    from cocomix_mlx.cli.app import app

    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    groups = {g.name for g in app.registered_groups}
    used = {args[0] for _, args, _ in CASES}
    assert commands - {"doctor"} <= used and groups <= used


@pytest.mark.parametrize("name,args,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, name, args, expected):
    before = snapshot(ws)
    code, out, err = run_cli([a.format(w=ws) for a in args])
    lines = [line for line in err.splitlines() if line.strip() and
             not line.startswith("warning:")]
    assert "Traceback" not in err + out, err
    assert code == 2, (code, err, out[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if expected:
        assert expected in lines[0], lines[0]
    assert snapshot(ws) == before
