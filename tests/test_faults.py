"""Fault injection on a real training run: SIGKILL at random moments, in the middle of a save
and between its two renames, and a full disk. After each, ``--resume`` must finish the run with
exactly the losses of the run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 12
TRAIN = ["--model.n_embd", "32", "--model.n_layer", "2", "--model.n_head", "2",
         "--model.n_positions", "64", "--seq-len", "32", "--batch-size", "2", "--steps",
         str(STEPS), "--eval-every", "0", "--log-every", "1", "--save-every", "1"]

# Runs the CLI with one fault planted: at the Nth call of a checkpoint write, the process kills
# itself in the middle of writing the optimizer state, or between the two renames of the swap,
# or (Ctrl-C) receives SIGINT just after that save.
DRIVER = """
import os, signal, sys
from pathlib import Path
import cocomix_mlx.files as f
point, nth, calls = sys.argv[1], int(sys.argv[2]), [0]
if point == "sigint-after-save":
    # as in a terminal: a test run started in the background inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    swap = f.swap_in
    def swap_in(src, path):
        swap(src, path)
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGINT)
    f.swap_in = swap_in
elif point == "between-renames":
    swap = f.swap_in
    def swap_in(src, path):
        calls[0] += 1
        if calls[0] == nth and Path(path).exists():
            Path(path).rename(f._old_path(Path(path)))
            os.kill(os.getpid(), signal.SIGKILL)
        return swap(src, path)
    f.swap_in = swap_in
else:
    save = f.save_weights
    def save_weights(path, tree):
        calls[0] += 1
        if calls[0] == nth:
            Path(path).write_bytes(b"\\0" * 4096)
            os.kill(os.getpid(), signal.SIGKILL)
        return save(path, tree)
    f.save_weights = save_weights
sys.argv = ["cocomix", *sys.argv[3:]]
from cocomix_mlx.cli.app import main
main()
"""


def pretrain(data, out, *extra, fault=None, background=False):
    args = ["pretrain", "--data", str(data), "--out", str(out), *TRAIN, *extra]
    cmd = ([sys.executable, "-c", DRIVER, *fault, *args] if fault else
           [sys.executable, "-m", "cocomix_mlx.cli.app", *args])
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def reference(mobydick_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "straight"
    r = pretrain(mobydick_data, out)
    assert r.returncode == 0, r.stderr
    assert [s for s, _ in losses(out)] == list(range(1, STEPS + 1))
    return losses(out)


def finish(data, out, *extra) -> None:
    """Resume the run to its end (``extra``: the overrides it was started with)."""
    r = pretrain(data, out, *extra, "--resume")
    assert r.returncode == 0, r.stderr
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


LLAMA = ["--model.model_type", "llama", "--model.n_kv_head", "1"]


@pytest.fixture(scope="module")
def llama_reference(mobydick_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "straight-llama"
    r = pretrain(mobydick_data, out, *LLAMA)
    assert r.returncode == 0, r.stderr
    return losses(out)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sigkill_at_random_moments_then_resume_gives_the_same_losses(mobydick_data, request,
                                                                     tmp_path, family):
    """Four kills at random times after training started (saves happen every step, so some
    land inside a save), each followed by --resume; then the run is finished."""
    rng = random.Random(1234)
    out = tmp_path / "run"
    extra = LLAMA if family == "llama" else []
    for attempt in range(4):
        proc = pretrain(mobydick_data, out, *(["--resume"] if out.exists() else extra),
                        background=True)
        deadline = time.time() + 300
        while not (out / "metrics.jsonl").exists() and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (out.exists() or (tmp_path / ".run.old").exists()):
            break  # killed before the first save: the next attempt starts afresh
    if not out.exists():
        assert pretrain(mobydick_data, out, *extra).returncode == 0
    finish(mobydick_data, out)
    reference = request.getfixturevalue("llama_reference" if family == "llama" else "reference")
    assert losses(out) == reference


@pytest.mark.parametrize("point,nth", [("mid-write", 3), ("between-renames", 5)])
def test_a_kill_inside_a_save_loses_at_most_that_save(mobydick_data, reference, tmp_path,
                                                      point, nth):
    out = tmp_path / "run"
    r = pretrain(mobydick_data, out, fault=(point, str(nth)))
    assert r.returncode == -signal.SIGKILL, r.stderr
    if point == "between-renames":
        assert not out.exists() and (tmp_path / ".run.old").exists()
    finish(mobydick_data, out)
    assert losses(out) == reference


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(
        mobydick_data, reference, tmp_path):
    """On a 1.2 MB file system one checkpoint (about 0.8 MB) fits but a second beside it does
    not: the run stops with one error line, leaves no temporary directory, and the checkpoint
    it kept resumes (elsewhere) to the uninterrupted losses."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1200k"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    try:
        out = disk / "run"
        r = pretrain(mobydick_data, out)
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "No space left on device" in lines[0] and "Traceback" not in r.stderr
        assert [p.name for p in disk.iterdir()] == ["run"]
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["step"] >= 1
        moved = tmp_path / "moved"
        shutil.copytree(out, moved)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    finish(mobydick_data, moved)
    assert losses(moved) == reference


@pytest.mark.parametrize("command", ["labels build", "data prepare", "sae train"])
def test_every_long_writer_on_a_full_disk_is_one_line(tmp_path, command):
    """A full file system mid-write is one error line for the commands that write the most: no
    SIGBUS from a memory-mapped label store, no traceback, no half-written output."""
    from conftest import cocomix, english_text

    from cocomix_mlx.data import prepare

    weights = Path(__file__).resolve().parents[1] / "weights"
    (tmp_path / "t.txt").write_text(english_text(60_000), encoding="utf-8")
    data = tmp_path / "data"
    prepare([str(tmp_path / "t.txt")], str(weights / "cocomix"), str(data), val_fraction=0.1)
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "40k"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    try:
        args = {"labels build": ["--teacher", weights / "teacher", "--sae", weights / "sae",
                                 "--data", data],
                "data prepare": [tmp_path / "t.txt", "--tokenizer", weights / "cocomix"],
                "sae train": ["--teacher", weights / "teacher", "--layer", "1", "--data", data,
                              "--latents", "4096", "--tokens", "2048", "--save-every", "1"]}
        r = cocomix(*command.split(), *args[command], "--out", disk / "out")
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "No space left on device" in lines[0] and "Traceback" not in r.stderr
        left = sorted(p.name for p in disk.iterdir())
        assert left in ([], [".out.partial"]), left  # a label store keeps its partial: --resume
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_ctrl_c_stops_with_one_line_and_a_checkpoint_that_resumes(mobydick_data, reference,
                                                                  tmp_path):
    """SIGINT in the middle of the run (just after its 5th save): one line, exit 130, and
    --resume finishes it with the losses of the run left alone."""
    out = tmp_path / "run"
    r = pretrain(mobydick_data, out, fault=("sigint-after-save", "5"))
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("interrupted; "), r.stderr
    assert json.loads((out / "trainer_state.json").read_text())["step"] < STEPS
    finish(mobydick_data, out)
    assert losses(out) == reference


def test_outputs_follow_the_umask(tmp_path):
    from conftest import english_text

    from cocomix_mlx.data import prepare

    weights = Path(__file__).resolve().parents[1] / "weights"
    (tmp_path / "t.txt").write_text(english_text(20_000), encoding="utf-8")
    old = os.umask(0o027)
    try:
        prepare([str(tmp_path / "t.txt")], str(weights / "cocomix"), str(tmp_path / "data"))
    finally:
        os.umask(old)
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o750
