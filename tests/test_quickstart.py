"""The offline default: shipped weights reproduce their recorded perplexities, and
`cocomix quickstart` runs end to end with a steered sample that differs from the plain one."""

import json
from pathlib import Path

import pytest

import cocomix_mlx as cm
from cocomix_mlx.data import prepare
from cocomix_mlx.evaluate import perplexity

from conftest import CORPUS, cocomix

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.mark.parametrize("name", ["teacher", "cocomix", "ntp"])
def test_shipped_weights_reproduce_recorded_perplexity(name, tmp_path_factory):
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    data = tmp_path_factory.getbasetemp() / "moby_val"
    if not data.exists():
        if not (CORPUS / "mobydick.txt.gz").exists():
            pytest.skip("corpus not available")
        prepare([str(CORPUS / "mobydick.txt.gz")], str(WEIGHTS / "teacher"), str(data), val_fraction=0.01)
    got = perplexity(str(WEIGHTS / name), str(data), seq_len=128)["ppl"]
    assert got == pytest.approx(manifest[name]["val_mobydick"]["ppl"], rel=0.01)


def test_quickstart_end_to_end_and_steering_changes_the_sample(tmp_path):
    from cocomix_mlx.cli.quickstart import steering_demo

    r = cocomix("quickstart", "--steps", "3", "--max-tokens", "16", "--out", tmp_path / "qs")
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout and "steered" in r.stdout and "ntp" in r.stdout
    model, tok = cm.load(tmp_path / "qs" / "cocomix")
    index, label, plain, steered = steering_demo(model, tok, WEIGHTS / "concepts.json", 8.0, 16)
    assert label in r.stdout
    assert all(w in r.stdout for w in plain.split()[:1])  # the samples printed are these
    assert plain != steered
    r = cocomix("quickstart", "--steps", "3", "--out", tmp_path / "qs")
    assert r.returncode == 2 and "--force" in r.stderr
