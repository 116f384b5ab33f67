"""Text → token shards, and batches from them.

Inputs are read by ``text.py``; an EOS token follows every document. Shards are raw
little-endian ``train.bin`` / ``val.bin`` (uint16 when the vocabulary fits, else uint32) read back
with ``np.memmap``; ``meta.json`` describes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import refuse_existing
from .text import Chunk, Progress, RemoteFile, iter_chunks

BATCH_ORDERS = ("random", "windows")
BATCH_CHARS = 2 << 20  # characters tokenized at once by `prepare` (~170 bytes per token held)


def prepare(inputs: list[str], tokenizer_dir: str, out_dir: str, val_fraction: float = 0.01,
            progress: Progress | None = None, force: bool = False, text_field: str = "text",
            max_tokens: int = 0, split_seed: int | None = None) -> dict:
    """Tokenize ``inputs`` into ``out_dir/{train,val}.bin`` + ``meta.json`` (atomically).

    ``text_field``: the JSONL field or Parquet column of each document. ``max_tokens`` > 0
    stops reading once the training split holds that many tokens (the last document is cut
    there; the validation split keeps what was held out up to that point). ``split_seed``
    holds out whole documents drawn at random (``text.held_out_documents``: the split Hugging
    Face ``datasets`` makes with that seed) instead of the tail of each input.
    """
    from .files import atomic_directory
    from .tokenizer import load_tokenizer

    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    if max_tokens < 0:
        raise DataError(f"--max-tokens must be >= 0 (0: no limit), not {max_tokens}")
    out = Path(out_dir)
    refuse_existing(out, force, inputs=(*(p for p in inputs if not isinstance(p, RemoteFile)),
                                        tokenizer_dir))
    tok = load_tokenizer(tokenizer_dir)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    meta: dict = {}

    def write(tmp: Path) -> None:
        counts = {"train": 0, "val": 0}
        files = {s: open(tmp / f"{s}.bin", "wb") for s in counts}
        batch: list[Chunk] = []
        chars = 0

        def flush() -> bool:
            """Write the batch; True once the training split is full."""
            for chunk, ids in zip(batch, tok.encode_batch([c.text for c in batch])):
                if chunk.doc_end:
                    ids.append(tok.eos_token_id)
                split = "val" if chunk.val else "train"
                if split == "train" and max_tokens:
                    ids = ids[:max_tokens - counts["train"]]
                np.asarray(ids, dtype=dtype).tofile(files[split])
                counts[split] += len(ids)
                if max_tokens and counts["train"] >= max_tokens:
                    return True
            batch.clear()
            nonlocal chars
            chars = 0
            return False

        try:
            for chunk in iter_chunks(inputs, val_fraction, progress, text_field, split_seed):
                batch.append(chunk)
                chars += len(chunk.text)
                if (len(batch) >= 8 or chars >= BATCH_CHARS or chunk.file_end) and flush():
                    break  # a remote file after this one is never fetched
            else:
                flush()
        finally:
            for f in files.values():
                f.close()
        tok.save(tmp / "tokenizer")
        meta.update({"tokenizer": str(Path(tokenizer_dir).resolve()), "tokenizer_id": tok.identity,
                     "vocab_size": tok.vocab_size, "eos_token_id": tok.eos_token_id,
                     "dtype": np.dtype(dtype).name, "train_tokens": counts["train"],
                     "val_tokens": counts["val"], "inputs": [str(p) for p in inputs],
                     "val_fraction": val_fraction, "text_field": text_field,
                     "max_tokens": max_tokens, "split_seed": split_seed})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    atomic_directory(out, write)
    return meta


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"no prepared data in {data_dir} (meta.json missing); "
                        "run `cocomix data prepare` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"corrupt {path}: {e}; prepare the data again") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("vocab_size"), int) and
            meta.get("dtype") in ("uint16", "uint32")):
        raise DataError(f"corrupt {path}: not the meta.json of `cocomix data prepare` (needs "
                        "vocab_size and dtype); prepare the data again")
    return meta


def check_vocab(meta: dict, model_vocab_size: int) -> None:
    if meta["vocab_size"] > model_vocab_size:
        raise DataError(f"the data was tokenized with a vocabulary of {meta['vocab_size']} but "
                        f"the model has {model_vocab_size}; use the same tokenizer for both")


def check_tokenizer(model_dir: str | Path, data_dir: str | Path) -> None:
    """Refuse data tokenized by another tokenizer than the model's (when both directories
    carry one): the same ids must mean the same tokens."""
    from .tokenizer import has_tokenizer, load_tokenizer

    ours = Path(data_dir) / "tokenizer"
    if not (has_tokenizer(model_dir) and has_tokenizer(ours)):
        return
    model_tok, data_tok = load_tokenizer(model_dir), load_tokenizer(ours)
    if model_tok.identity != data_tok.identity and model_tok.vocab() != data_tok.vocab():
        raise DataError(f"{data_dir} was tokenized with another tokenizer than {model_dir}'s; "
                        f"prepare the data again with --tokenizer {model_dir}")


class TokenDataset:
    """A memory-mapped token shard with deterministic training and evaluation batches."""

    def __init__(self, data_dir: str | Path, split: str):
        self.meta = load_meta(data_dir)
        path = Path(data_dir) / f"{split}.bin"
        if not path.exists():
            raise DataError(f"missing {path}; prepare the data again")
        size = path.stat().st_size
        if size % np.dtype(self.meta["dtype"]).itemsize:
            raise DataError(f"{path} holds {size} bytes, not a whole number of "
                            f"{self.meta['dtype']} tokens: it is truncated; prepare the data again")
        self.tokens = np.memmap(path, dtype=self.meta["dtype"], mode="r") if size else \
            np.zeros(0, dtype=self.meta["dtype"])
        self.path = path

    def __len__(self) -> int:
        return len(self.tokens)

    def _need(self, seq_len: int) -> None:
        if len(self) < seq_len + 1:
            raise DataError(f"{self.path} holds {len(self)} tokens, fewer than one window of "
                            f"{seq_len + 1}; lower --seq-len or add data")

    def starts_at(self, step: int, batch_size: int, seq_len: int, seed: int,
                  order: str = "random") -> np.ndarray:
        """Window starts of the training batch of ``step``, a function of (seed, step) alone.

        ``random``: anywhere in the shard. ``windows``: the shard's consecutive ``seq_len``-token
        windows, each epoch a fresh permutation of them (batches then coincide with windows
        labelled ahead, e.g. by a label store built with ``--window seq_len --stride seq_len``).
        """
        if order == "random":
            rng = np.random.default_rng([seed, step])
            return rng.integers(0, len(self) - seq_len, size=batch_size)
        if order not in BATCH_ORDERS:
            raise DataError(f"batch order must be one of {', '.join(BATCH_ORDERS)}, not {order!r}")
        count = (len(self) - 1) // seq_len
        index = np.arange(step * batch_size, (step + 1) * batch_size)
        starts = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(index // count):
            rows = index // count == epoch
            perm = np.random.default_rng([seed, int(epoch), 1]).permutation(count)
            starts[rows] = perm[index[rows] % count] * seq_len
        return starts

    def take(self, starts, seq_len: int):
        """``(inputs, targets)`` of the windows at ``starts``."""
        window = np.stack([self.tokens[s:s + seq_len + 1] for s in starts]).astype(np.int32)
        return window[:, :-1], window[:, 1:]

    def batch_at(self, step: int, batch_size: int, seq_len: int, seed: int,
                 order: str = "random"):
        """The training batch of ``step`` (see :meth:`starts_at`)."""
        return self.take(self.starts_at(step, batch_size, seq_len, seed, order), seq_len)

    def batches(self, batch_size: int, seq_len: int, seed: int, start_step: int = 0,
                order: str = "random"):
        self._need(seq_len)
        step = start_step
        while True:
            yield self.batch_at(step, batch_size, seq_len, seed, order)
            step += 1

    def eval_batches(self, batch_size: int, seq_len: int, max_batches: int | None = None,
                     stride: int = 0):
        """Consecutive windows of ``seq_len`` predictions from the start of the shard, one every
        ``stride`` tokens (default ``seq_len``: every token but the first is predicted once;
        ``seq_len + 1``: disjoint blocks, each predicting all of its tokens but its first)."""
        stride = stride or seq_len
        if len(self) < seq_len + 1:
            return
        n_windows = (len(self) - seq_len - 1) // stride + 1
        if max_batches:
            n_windows = min(n_windows, max_batches * batch_size)
        for first in range(0, n_windows, batch_size):
            yield self.take(range(first * stride, min(first + batch_size, n_windows) * stride,
                                  stride), seq_len)
