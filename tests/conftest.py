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
