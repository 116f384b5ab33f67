"""Training and importing tokenizers: GPT-2's BPE files, and the same tokenizer every time."""

import random
import subprocess
import sys

import numpy as np

from cocomix_mlx.tokenizer import _sample, build_tokenizer, load_tokenizer

from conftest import gpt2_bpe_dir


def test_gpt2_bpe_files_give_gpt2_ids(tmp_path):
    src = gpt2_bpe_dir()
    info = build_tokenizer([str(src)], 0, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert info["vocab_size"] == 50257 and tok.eos_token_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the cat's") == [262, 3797, 338]
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok")).encode("Hello world") == [15496, 995]


_TRAIN_IN_A_PROCESS = """
import sys
from cocomix_mlx.tokenizer import train_tokenizer
train_tokenizer([sys.argv[1]], 600, sys.argv[2], max_sentences=300)
"""


def test_tokenizer_trained_on_a_sample_is_the_same_in_every_process(tmp_path):
    """More lines than ``max_sentences``: the sample is drawn from a fixed seed, so a rebuilt
    study gets its tokenizer (and every shard, teacher and label store after it) back exactly.
    sentencepiece's own sampler drew a new seed from the OS in every process."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(3000)]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000))
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    outs = [tmp_path / f"tok{i}" for i in range(3)]
    for out in outs:
        subprocess.run([sys.executable, "-c", _TRAIN_IN_A_PROCESS, str(tmp_path / "a.txt"),
                        str(out)], check=True)
    for name in ("tokenizer.json", "tokenizer.model"):
        assert len({(out / name).read_bytes() for out in outs}) == 1


def test_tokenizer_sample_is_uniform_ordered_and_seeded():
    lines = [f"line {i}" for i in range(50)]
    assert _sample(iter(lines), 80, 0) == lines  # fewer lines than the sample: all, in order
    picked = _sample(iter(lines), 10, 3)
    assert len(picked) == 10 and picked == sorted(picked, key=lines.index)  # a subset, in order
    assert picked == _sample(iter(lines), 10, 3) != _sample(iter(lines), 10, 4)
    counts = np.zeros(50)
    for seed in range(2000):
        for line in _sample(iter(lines), 10, seed):
            counts[lines.index(line)] += 1
    # every line is kept with probability 10/50: 400 of 2000 draws, binomial s.d. about 18
    assert np.all(np.abs(counts - 400) < 90), counts
