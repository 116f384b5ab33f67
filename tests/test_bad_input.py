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

from bad_input_cases import CASES
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
