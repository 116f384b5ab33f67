"""``labels build`` throughput: student tokens labelled per second (and teacher positions per
second, which differ for a teacher with its own tokenizer). Prints one JSON line per teacher.

    python benchmarks/labels_build.py --data DIR [--tokens 20000] --teacher weights/teacher \
        --sae weights/sae [--teacher runs/smol --random-sae 14:9216 --window 256 ...]

``--teacher`` may be repeated; each takes the next ``--sae`` (an SAE directory) or
``--random-sae LAYER:LATENTS`` (a random TopK SAE of the teacher's width: the cost does not
depend on its weights). The data is cut to its first ``--tokens`` training tokens (and as many
validation tokens as it has, up to a tenth of that).
"""

from __future__ import annotations

import cocomix_mlx  # noqa: F401  (first: BLAS setup)

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from cocomix_mlx import labels
from cocomix_mlx.backend import BLAS, device_name
from cocomix_mlx.data import load_meta


def cut_data(src: Path, dst: Path, tokens: int) -> None:
    meta = load_meta(src)
    dst.mkdir(parents=True)
    for split, n in (("train", tokens), ("val", tokens // 10)):
        data = np.fromfile(src / f"{split}.bin", dtype=meta["dtype"])[:n]
        data.tofile(dst / f"{split}.bin")
        meta[f"{split}_tokens"] = len(data)
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    (dst / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def random_sae(teacher: Path, spec: str, out: Path) -> Path:
    from cocomix_mlx.checkpoint import load_model
    from cocomix_mlx.models.backbone import backbone
    from cocomix_mlx.models.sae import SAEConfig, TopKSAE, save_sae

    layer, latents = (int(x) for x in spec.split(":"))
    model, _ = load_model(teacher, lazy=True)
    d = backbone(model).width
    sae = TopKSAE(SAEConfig(d=d, latents=latents, k=32, layer=layer))
    sae.encoder.weight = sae.decoder.weight.T
    out.mkdir(parents=True)
    save_sae(sae, out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--teacher", type=Path, action="append", required=True)
    p.add_argument("--sae", action="append", default=[])
    p.add_argument("--random-sae", action="append", default=[])
    p.add_argument("--window", type=int, action="append", default=[])
    p.add_argument("--stride", type=int, action="append", default=[])
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    saes = [("dir", s) for s in args.sae] + [("random", s) for s in args.random_sae]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cut_data(args.data, tmp / "data", args.tokens)
        for i, teacher in enumerate(args.teacher):
            kind, spec = saes[i]
            sae = Path(spec) if kind == "dir" else random_sae(teacher, spec, tmp / f"sae{i}")
            cfg = labels.BuildConfig(window=(args.window[i:i + 1] or [0])[0],
                                     stride=(args.stride[i:i + 1] or [0])[0],
                                     batch_size=args.batch_size)
            start = time.perf_counter()
            meta = labels.build(teacher, sae, tmp / "data", tmp / f"store{i}", cfg)
            seconds = time.perf_counter() - start
            tokens = meta["train"]["tokens"] + meta["val"]["tokens"]
            positions = meta["train"]["teacher_tokens"] + meta["val"]["teacher_tokens"]
            print(json.dumps({
                "teacher": str(teacher), "layer": meta["layer"], "latents": meta["sae"]["latents"],
                "width": meta["teacher"]["width"], "window": meta["window"],
                "stride": meta["stride"], "batch_size": meta["batch_size"],
                "cross_tokenizer": meta["aligned"], "tokens": tokens,
                "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
                "teacher_positions_per_s": round(positions / seconds, 1),
                "labelled": meta["train"]["labelled"] + meta["val"]["labelled"],
                "device": device_name(), "blas": BLAS.status, "machine": platform.machine(),
                "mlx": mx.__version__}), flush=True)


if __name__ == "__main__":
    main()
