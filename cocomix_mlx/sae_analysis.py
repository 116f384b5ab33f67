"""SAE evaluation (FVU, L0, dead latents, delta loss) and the concept dictionary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .concepts import check_sae
from .data import TokenDataset, check_vocab, load_meta
from .errors import ConfigError, DataError
from .models.backbone import backbone
from .ops import cross_entropy


def _windows(data_dir: str | Path, split: str, batch_size: int, seq_len: int, batches: int):
    if batches < 1:
        raise ConfigError(f"--batches must be positive, not {batches}")
    data = TokenDataset(data_dir, split)
    out = list(data.eval_batches(batch_size, seq_len, batches))
    if not out:
        raise DataError(f"the {split} split of {data_dir} is shorter than one window of "
                        f"{seq_len + 1} tokens")
    return out


def evaluate_sae(teacher: nn.Module, sae, layer: int, data_dir: str | Path, batches: int = 20,
                 batch_size: int = 8, seq_len: int = 128, split: str = "val") -> dict[str, float]:
    """FVU and L0 of the reconstruction, the fraction of latents that never fire, and the
    teacher's next-token loss with block ``layer``'s output replaced by the reconstruction.

    ``fvu`` is of the residual itself; ``fvu_normalized`` is of the standardized input the SAE
    is trained on (the training progress bar's FVU), where the per-token mean and scale that the
    SAE passes through unchanged earn no credit.

    Position 0 of each window is left out, as in training: with no context before it, it is an
    attention sink in many models (activations orders of magnitude larger than elsewhere); its
    residual is kept as it is when the others are replaced.
    """
    check_sae(teacher, sae)
    bb = backbone(teacher)
    bb.check_layer(layer)
    check_vocab(load_meta(data_dir), bb.vocab)
    seq_len = min(seq_len, bb.context)

    @mx.compile
    def measure(inputs, targets):
        h, upper = bb.split(inputs, layer)
        h = h.astype(mx.float32)
        x = h[:, 1:]
        xn, stats = sae.preprocess(x)
        z = sae.encode(x)
        recon_n = sae.decode_standardized(z)
        recon = sae.destandardize(recon_n, stats)
        err, var = _squared_error(recon, x)
        err_n, var_n = _squared_error(recon_n, xn)
        clean = cross_entropy(bb.head(upper(h)), targets)
        spliced = mx.concatenate([h[:, :1], recon], axis=1).astype(h.dtype)
        spliced = cross_entropy(bb.head(upper(spliced)), targets)
        fired = (z > 0).reshape(-1, z.shape[-1]).any(0)
        return err, var, err_n, var_n, (z > 0).sum(-1).mean(), fired, clean, spliced

    totals = np.zeros(7)
    fired = np.zeros(sae.cfg.latents, bool)
    windows = _windows(data_dir, split, batch_size, seq_len, batches)
    for inputs, targets in windows:
        *sums, f, clean, spliced = measure(mx.array(inputs), mx.array(targets))
        totals += [a.item() for a in (*sums, clean, spliced)]
        fired |= np.array(f)
    n = len(windows)
    err, var, err_n, var_n, l0, clean, spliced = totals
    return {"fvu": err / var, "fvu_normalized": err_n / var_n, "l0": l0 / n,
            "dead_fraction": float(1 - fired.mean()), "clean_loss": clean / n,
            "spliced_loss": spliced / n, "delta_loss": (spliced - clean) / n,
            "tokens": n * batch_size * seq_len}


def _squared_error(reconstruction: mx.array, target: mx.array) -> tuple[mx.array, mx.array]:
    """(‖x̂ - x‖², ‖x - mean(x)‖²) summed over the rows of a (..., d) batch: FVU's two sums."""
    x = target.reshape(-1, target.shape[-1])
    err = ((reconstruction.reshape(x.shape) - x) ** 2).sum()
    return err, ((x - x.mean(0, keepdims=True)) ** 2).sum()


def promoted_tokens(teacher: nn.Module, sae, top: int = 8) -> np.ndarray:
    """(C, top) token ids each decoder direction most promotes: W_dec[:, j] → final norm → head."""
    bb = backbone(teacher)
    logits = bb.head(bb.norm(sae.W_dec.T.astype(mx.float32)))
    return np.array(mx.argpartition(-logits, kth=top - 1, axis=-1)[:, :top]
                    if top < logits.shape[-1] else mx.argsort(-logits, -1))


def describe(teacher: nn.Module, tokenizer, sae, layer: int, data_dir: str | Path,
             batches: int = 20, batch_size: int = 8, seq_len: int = 128, contexts: int = 5,
             top_tokens: int = 8, split: str = "val") -> dict:
    """The concept dictionary: per latent its activation frequency, top-activating contexts,
    most-promoted tokens and a short label."""
    check_sae(teacher, sae)
    bb = backbone(teacher)
    bb.check_layer(layer)
    check_vocab(load_meta(data_dir), bb.vocab)
    seq_len = min(seq_len, bb.context)
    encode = mx.compile(lambda tokens: sae.encode(bb.residual(tokens, layer).astype(mx.float32)))
    C = sae.cfg.latents
    best_val = np.full((contexts, C), -np.inf, np.float32)
    best_at = np.zeros((contexts, C), np.int64)
    counts = np.zeros(C, np.int64)
    windows = _windows(data_dir, split, batch_size, seq_len, batches)
    all_tokens = np.concatenate([w[0] for w in windows])  # (W, T)
    for b, (inputs, _) in enumerate(windows):
        z = np.array(encode(mx.array(inputs))).reshape(-1, C)
        counts += (z > 0).sum(0)
        flat_at = b * batch_size * seq_len + np.arange(z.shape[0])
        vals = np.concatenate([best_val, z])
        ats = np.concatenate([best_at, np.broadcast_to(flat_at[:, None], z.shape)])
        keep = np.argpartition(-vals, contexts - 1, axis=0)[:contexts]
        best_val = np.take_along_axis(vals, keep, 0)
        best_at = np.take_along_axis(ats, keep, 0)
    promoted = promoted_tokens(teacher, sae, top_tokens)
    total = all_tokens.size
    latents = []
    for j in range(C):
        order = np.argsort(-best_val[:, j])
        ctx, max_tokens = [], []
        for i in order:
            if best_val[i, j] <= 0:
                continue
            w, t = divmod(int(best_at[i, j]), seq_len)
            left = tokenizer.decode(all_tokens[w, max(0, t - 12):t].tolist())
            tok = tokenizer.decode([int(all_tokens[w, t])])
            ctx.append({"text": f"{left}«{tok}»", "activation": float(best_val[i, j])})
            max_tokens.append(tok.strip())
        promo = [tokenizer.decode([int(t)]) for t in promoted[j]]
        latents.append({"index": j, "frequency": float(counts[j] / total), "contexts": ctx,
                        "promoted": promo, "label": _label(max_tokens, promo, counts[j])})
    return {"sae": {"d": sae.cfg.d, "latents": C, "k": sae.cfg.k, "layer": layer},
            "tokens": int(total), "latents": latents}


def _label(max_tokens: list[str], promoted: list[str], count: int) -> str:
    if count == 0:
        return "dead"
    common = [t for t, _ in Counter(t for t in max_tokens if t).most_common(2)]
    words = common or [p.strip() for p in promoted[:2] if p.strip()]
    return "/".join(words) if words else "misc"


def read_dictionary(path: str | Path) -> list[dict]:
    """The latents of a ``describe`` dictionary (index, label, frequency, contexts, promoted)."""
    try:
        latents = json.loads(Path(path).read_text(encoding="utf-8"))["latents"]
        for item in latents:
            item["index"], item["label"] = int(item["index"]), str(item["label"])
        return latents
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"cannot read the concept dictionary {path}: {e}") from None


def dictionary_labels(path: str | Path) -> dict[int, str]:
    """Latent index → label from a ``describe`` dictionary."""
    return {item["index"]: item["label"] for item in read_dictionary(path)}


def concept_names(path: str | Path) -> dict[str, int]:
    """Label → latent index from a ``describe`` dictionary (the first latent of each label;
    ``label#index`` always works)."""
    return names_of(read_dictionary(path))


def names_of(latents: list[dict]) -> dict[str, int]:
    """:func:`concept_names` of the latents of a dictionary already read."""
    names: dict[str, int] = {}
    for item in latents:
        names.setdefault(item["label"], item["index"])
        names[f"{item['label']}#{item['index']}"] = item["index"]
    return names
