"""lm-eval throughput of our adapter vs mlx-lm's (``mlx_lm.evaluate.MLXLM``) on the same d256
NTP checkpoint, and ``data prepare`` tokens/s from Parquet vs from plain text. Prints JSON lines.

    python benchmarks/harness.py [--items 200] [--repeats 3]

The checkpoint has random weights (d=256, L=6, H=8, the 8192-piece tokenizer trained here on
the corpus); the task is multiple choice over local JSONL (4 choices per item: 4 loglikelihood
requests each); both models are timed in turn, alternating, medians. Needs ../shared/corpus.
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_docs(chars: int) -> list[str]:
    text = gzip.decompress((CORPUS / "austen.txt.gz").read_bytes()).decode("utf-8")[:chars]
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80]


def setup(root: Path, items: int):
    from cocomix_mlx.checkpoint import write_model_files
    from cocomix_mlx.config import ModelConfig
    from cocomix_mlx.models import build_model
    from cocomix_mlx.tokenizer import train_tokenizer

    docs = corpus_docs(2_000_000)
    (root / "corpus.txt").write_text("\n\n".join(docs), encoding="utf-8")
    train_tokenizer([str(root / "corpus.txt")], 8192, str(root / "tok"))
    model = build_model(ModelConfig(vocab_size=8192, n_embd=256, n_layer=6, n_head=8,
                                    n_positions=256))
    (root / "ntp").mkdir()
    write_model_files(root / "ntp", model, root / "tok")
    words = [d.split() for d in docs if len(d.split()) > 24][:items + 3]
    with open(root / "mc.jsonl", "w") as f:
        for i in range(items):
            choices = [" " + " ".join(words[i + j][12:24]) for j in range(4)]
            f.write(json.dumps({"context": " ".join(words[i][:12]), "choices": choices,
                                "gold": 0}) + "\n")
    (root / "mc.yaml").write_text(
        f"task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
        f"{root}/mc.jsonl\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n")
    return docs


def harness_speed(root: Path, items: int, repeats: int) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from mlx_lm.evaluate import MLXLM

    import cocomix_mlx as cm
    from cocomix_mlx.harness import harness_lm

    manager = TaskManager(include_path=str(root))
    net, tok = cm.load(root / "ntp")
    models = {"ours": harness_lm(net, tok, batch_size=16),
              "mlx_lm": MLXLM(str(root / "ntp"), batch_size=16)}
    times: dict[str, list[float]] = {k: [] for k in models}
    accs = {}
    order = list(models.items())
    for i in range(repeats):
        for name, lm in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(model=lm, tasks=["bench_mc"], task_manager=manager,
                                          bootstrap_iters=0, log_samples=False)
            times[name].append(time.perf_counter() - start)
            accs[name] = out["results"]["bench_mc"]["acc,none"]
    requests = 4 * items
    rps = {k: round(requests / statistics.median(v), 1) for k, v in times.items()}
    return {"case": "lm_eval_requests_per_s", "requests": requests, **rps,
            "ratio": round(rps["ours"] / rps["mlx_lm"], 3), "acc": accs}


def prepare_speed(root: Path, docs: list[str]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cocomix_mlx.data import prepare

    pq.write_table(pa.table({"text": docs}), root / "corpus.parquet")
    with open(root / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    out = {"case": "data_prepare_tokens_per_s"}
    for name in ("corpus.txt", "corpus.jsonl", "corpus.parquet"):
        start = time.perf_counter()
        meta = prepare([str(root / name)], str(root / "tok"), str(root / f"d-{name}"),
                       val_fraction=0.0)
        out[name.split(".")[1]] = round(meta["train_tokens"] / (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cocomix-harness-"))
    docs = setup(root, args.items)
    base = {"device": str(mx.default_device()), "mlx": mx.__version__}
    print(json.dumps({**base, **harness_speed(root, args.items, args.repeats)}), flush=True)
    print(json.dumps({**base, **prepare_speed(root, docs)}), flush=True)


if __name__ == "__main__":
    main()
