"""Rebuild every shipped model in weights/ from the corpus (about 35 minutes on 2 CPU cores).

    python weights/build.py [--corpus ../shared/corpus] [--work /tmp/cocomix-weights]

Text: the public-domain and permissively licensed files of the corpus (Austen, Moby-Dick, the
King James Bible, The Devil's Dictionary: public domain; fortunes: BSD; Python 3.11
documentation: PSF licence). 1% of each file (its tail) is held out for validation.
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx

from cocomix_mlx.checkpoint import load_model, write_model_files
from cocomix_mlx.config import preset
from cocomix_mlx.data import prepare
from cocomix_mlx.evaluate import perplexity
from cocomix_mlx.models.sae import load_sae, save_sae
from cocomix_mlx.runs import make_run
from cocomix_mlx.sae_analysis import describe, evaluate_sae
from cocomix_mlx.sae_trainer import SAETrainConfig, SAETrainer
from cocomix_mlx.tokenizer import load_tokenizer, train_tokenizer

HERE = Path(__file__).resolve().parent
FILES = ["austen.txt.gz", "mobydick.txt.gz", "kjv.txt.gz", "devil.txt.gz", "fortunes.txt.gz",
         "python_html.txt.gz"]
SHAPE = dict(n_layer=4, n_head=4, n_positions=128)
TEACHER = dict(n_embd=128, steps=2000)
SAE = dict(layer=1, latents=2048, k=32, tokens=400_000)
STUDENT = dict(n_embd=128, steps=1000, insert_layer=2, concept_num=32)
NTP_TWIN = dict(n_embd=160, steps=1000)  # widened to the CoCoMix student's parameter count


def config(d: int, steps: int, vocab: int, mode: str = "ntp"):
    cfg = preset("tiny")
    cfg.model.vocab_size, cfg.model.n_embd = vocab, d
    for k, v in SHAPE.items():
        setattr(cfg.model, k, v)
    t = cfg.train
    t.mode, t.seq_len, t.batch_size, t.steps, t.lr = mode, 128, 16, steps, 2e-3
    t.eval_every, t.save_every, t.eval_batches, t.log_every = steps, steps, 20, 10
    return cfg


def train(cfg, data: Path, out: Path) -> None:
    make_run(cfg, data, out, force=True).train()


def ship(src: Path, name: str) -> dict:
    """Copy checkpoint ``src`` into weights/NAME as fp16 and measure its validation perplexity."""
    model, config_ = load_model(src)
    model.set_dtype(mx.float16)
    dst = HERE / name
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    extra = {k: config_[k] for k in ("bos_token_id", "eos_token_id") if k in config_}
    write_model_files(dst, model, src, extra)
    return {"val": perplexity(str(dst), str(WORK / "data"), seq_len=128, max_batches=50),
            "val_mobydick": perplexity(str(dst), str(WORK / "moby"), seq_len=128)}


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=HERE.parent.parent / "shared" / "corpus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cocomix-weights"))
    args = parser.parse_args()
    WORK = args.work
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    inputs = [str(args.corpus / f) for f in FILES]
    train_tokenizer(inputs, 4096, WORK / "tok", max_sentences=300_000)
    prepare(inputs, str(WORK / "tok"), str(WORK / "data"), val_fraction=0.01)
    prepare([str(args.corpus / "mobydick.txt.gz")], str(WORK / "tok"), str(WORK / "moby"),
            val_fraction=0.01)
    vocab = load_tokenizer(WORK / "tok").vocab_size
    manifest: dict = {}

    train(config(TEACHER["n_embd"], TEACHER["steps"], vocab), WORK / "data", WORK / "teacher")
    manifest["teacher"] = ship(WORK / "teacher", "teacher")

    teacher, _ = load_model(HERE / "teacher")
    teacher.set_dtype(mx.float32)
    sae_cfg = SAETrainConfig(**SAE, save_every=0)
    SAETrainer(sae_cfg, teacher, WORK / "data", WORK / "sae", teacher_name="weights/teacher").train()
    sae = load_sae(WORK / "sae")
    sae.set_dtype(mx.float16)
    shutil.rmtree(HERE / "sae", ignore_errors=True)
    (HERE / "sae").mkdir()
    save_sae(sae, HERE / "sae")
    sae.set_dtype(mx.float32)
    manifest["sae"] = evaluate_sae(teacher, sae, SAE["layer"], WORK / "data", batches=50)
    tok = load_tokenizer(WORK / "tok")
    from cocomix_mlx.checkpoint import load as load_ckpt

    _, wrapper = load_ckpt(HERE / "teacher")
    concepts = describe(teacher, wrapper, sae, SAE["layer"], WORK / "data", batches=50)
    (HERE / "concepts.json").write_text(json.dumps(concepts, ensure_ascii=False) + "\n")
    del tok

    cfg = config(STUDENT["n_embd"], STUDENT["steps"], vocab, mode="cocomix")
    c = cfg.concept
    c.concept_dim, c.concept_num, c.insert_layer = SAE["latents"], STUDENT["concept_num"], STUDENT["insert_layer"]
    o = cfg.objective
    o.teacher, o.sae, o.sae_layer = str(HERE / "teacher"), str(HERE / "sae"), SAE["layer"]
    train(cfg, WORK / "data", WORK / "cocomix")
    manifest["cocomix"] = ship(WORK / "cocomix", "cocomix")
    train(config(NTP_TWIN["n_embd"], NTP_TWIN["steps"], vocab), WORK / "data", WORK / "ntp")
    manifest["ntp"] = ship(WORK / "ntp", "ntp")
    manifest["recipe"] = {"files": FILES, "val_fraction": 0.01, "vocab_size": vocab,
                          "teacher": TEACHER, "sae": SAE, "student": STUDENT, "ntp_twin": NTP_TWIN,
                          "shape": SHAPE, "seq_len": 128, "batch_size": 16, "lr": 2e-3}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2, default=float) + "\n")
    print(json.dumps(manifest, indent=2, default=float))


if __name__ == "__main__":
    main()
