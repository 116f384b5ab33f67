"""``cocomix serve`` against in-process generation on the same checkpoint. Prints JSON lines.

    python benchmarks/serve.py [--tokens 256] [--repeats 3]

For an NTP and a CoCoMix checkpoint (random weights, d=256 L=6 H=8, GPT-2's vocabulary, context
1024; the shapes of ``generate.py``): time to first token and decode tokens/s of
``cocomix_mlx.generate.stream`` (what ``cocomix generate`` runs) and of one streaming client of
the server (raw HTTP, server-sent events), timed in turn, alternating, ``--repeats`` times,
medians; then 4 concurrent clients (the server runs them one after another): their mean and
largest time to first token and the aggregate tokens/s. Greedy; every request generates exactly
``--tokens`` tokens (no end-of-text within that budget on random weights is checked).
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from cocomix_mlx.backend import device_name
from cocomix_mlx.generate import stream

sys.path.insert(0, str(Path(__file__).parent))
from generate import checkpoint  # noqa: E402  (this folder's generate.py: the same shapes)

PROMPT = ("It is a truth universally acknowledged, that a single man in possession of a good "
          "fortune, must be in want of a wife.")


def in_process(model, tokenizer, tokens: int) -> dict:
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in stream(model, tokenizer, PROMPT, max_tokens=tokens,
                                                  temp=0.0)]
    return _timing(start, stamps, tokens)


def client(url: str, tokens: int) -> dict:
    body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
                       "stream": True}).encode()
    start = time.perf_counter()
    req = urllib.request.Request(url + "/v1/completions", body,
                                 {"Content-Type": "application/json"})
    stamps = []
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                stamps.append(time.perf_counter())
    return _timing(start, stamps, tokens)


def _timing(start: float, stamps: list[float], tokens: int) -> dict:
    if len(stamps) != tokens:
        raise SystemExit(f"expected {tokens} tokens, got {len(stamps)}")
    return {"ttft_ms": 1000 * (stamps[0] - start),
            "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "wall_s": stamps[-1] - start}


def concurrent(url: str, tokens: int, clients: int) -> dict:
    results = [None] * clients

    def run(i):
        results[i] = client(url, tokens)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [r["ttft_ms"] for r in results]
    return {"clients": clients, "ttft_ms_mean": round(statistics.mean(ttft), 1),
            "ttft_ms_max": round(max(ttft), 1),
            "aggregate_tps": round(clients * tokens / wall, 1)}


def start_server(path: Path) -> tuple[str, subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "cocomix_mlx.cli.app", "serve", "--model",
                             str(path), "--port", "0"], stdout=subprocess.PIPE, text=True)
    port = re.search(r"127\.0\.0\.1:(\d+)/", proc.stdout.readline()).group(1)
    return f"http://127.0.0.1:{port}", proc


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpt2", default=str(Path(__file__).parents[2] / "shared/tokenizers/gpt2"))
    args = ap.parse_args()
    from cocomix_mlx.tokenizer import tokenizer_from_gpt2_files

    import cocomix_mlx as cm

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gpt2 = Path(args.gpt2)
        tokenizer_from_gpt2_files(gpt2 / "encoder.json", gpt2 / "vocab.bpe", root / "tok")
        for mode in ("ntp", "cocomix"):
            path = checkpoint(root, mode, 50257)
            model, tokenizer = cm.load(path)
            url, proc = start_server(path)
            try:
                client(url, 8), in_process(model, tokenizer, 8)  # warm both
                runs = {"in_process": [], "server": []}
                for i in range(args.repeats):
                    pair = [("in_process", lambda: in_process(model, tokenizer, args.tokens)),
                            ("server", lambda: client(url, args.tokens))]
                    for name, fn in (pair if i % 2 == 0 else pair[::-1]):
                        runs[name].append(fn())
                row = {"bench": "serve", "device": device_name(), "model": mode,
                       "tokens": args.tokens, "repeats": args.repeats}
                for name, rs in runs.items():
                    row[name] = {"ttft_ms": median(rs, "ttft_ms"),
                                 "decode_tps": median(rs, "decode_tps"),
                                 "decode_tps_runs": [round(r["decode_tps"], 1) for r in rs]}
                row["server_vs_in_process"] = round(row["server"]["decode_tps"]
                                                    / row["in_process"]["decode_tps"], 3)
                row["concurrent"] = concurrent(url, args.tokens, 4)
                print(json.dumps(row), flush=True)
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
