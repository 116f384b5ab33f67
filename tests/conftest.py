import cocomix_mlx  # noqa: F401  (first: BLAS setup before mlx is imported)

import gzip
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def corpus_text(name: str, max_chars: int | None = None) -> str:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"corpus file {path} not available")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read(max_chars) if max_chars else f.read()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not CORPUS.exists():
        pytest.skip(f"corpus directory {CORPUS} not available")
    return CORPUS


def cocomix(*args, cwd=None):
    """Run the ``cocomix`` CLI in a subprocess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cocomix_mlx.cli.app", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="session")
def mobydick_data(tmp_path_factory):
    """Moby-Dick (600k characters) with a 1024-token sentencepiece vocabulary, 5% validation."""
    from cocomix_mlx.data import prepare
    from cocomix_mlx.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("moby")
    text_path = root / "mobydick.txt"
    text_path.write_text(corpus_text("mobydick.txt.gz", 600_000), encoding="utf-8")
    train_tokenizer([str(text_path)], 1024, str(root / "tok"))
    prepare([str(text_path)], str(root / "tok"), str(root / "data"), val_fraction=0.05)
    return root / "data"


@pytest.fixture(scope="session")
def tiny_teacher(mobydick_data, tmp_path_factory):
    """A d=64, 2-block GPT-2 trained 150 steps on Moby-Dick (a checkpoint directory)."""
    from test_train import make_trainer, small_config

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    make_trainer(small_config(150, eval_every=0, save_every=150, lr=1e-2), mobydick_data, out).train()
    return out
