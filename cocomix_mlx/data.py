"""Text → token shards, and batches from them.

Inputs are ``.txt`` / ``.gz`` files, folders of them, and ``.jsonl`` (one document per line in the
field ``text``). A text file is one document; an EOS token follows every document. Shards are raw
little-endian ``train.bin`` / ``val.bin`` (uint16 when the vocabulary fits, else uint32) read back
with ``np.memmap``; ``meta.json`` describes them.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import DataError

BLOCK = 1 << 20
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".gz", ".jsonl")
Progress = Callable[[int, "int | None"], None]
BATCH_ORDERS = ("random", "windows")


@dataclass
class Chunk:
    text: str
    doc_end: bool  # the document ends with this chunk
    val: bool  # the chunk belongs to the validation split


def expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and p.name.endswith(TEXT_SUFFIXES) and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not files:
        raise DataError(f"no text files (.txt, .gz, .jsonl) in {', '.join(inputs)}")
    return files


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _text_size(path: Path) -> int:
    """Uncompressed size in bytes (gzip keeps it, modulo 2^32, in its trailer)."""
    if path.suffix != ".gz":
        return path.stat().st_size
    if path.stat().st_size < 2**32:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return struct.unpack("<I", f.read(4))[0]
    with gzip.open(path, "rb") as f:
        return sum(len(b) for b in iter(lambda: f.read(BLOCK), b""))


def _read_text(path: Path) -> Iterator[tuple[bytes, str]]:
    """(raw block, decoded text) pairs, each block ending at a line break (except the last)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry = b""
    try:
        with _open(path) as f:
            while True:
                block = f.read(BLOCK)
                final = not block
                data = carry + block
                if not final:
                    cut = data.rfind(b"\n") + 1
                    data, carry = (data[:cut], data[cut:]) if cut else (b"", data)
                if b"\x00" in data:
                    raise DataError(f"{path} looks binary (NUL bytes); give UTF-8 text")
                if data or final:
                    yield data, decoder.decode(data, final=final)
                if final:
                    return
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _text_chunks(path: Path, val_fraction: float) -> Iterator[Chunk]:
    size = _text_size(path)
    cut = int(size * (1.0 - val_fraction)) if val_fraction > 0 else size + 1
    offset = 0
    pending: Chunk | None = None
    for raw, text in _read_text(path):
        end = offset + len(raw)
        pieces = [(text, offset >= cut)]
        if offset < cut < end:
            brk = raw.find(b"\n", cut - offset)
            split_at = len(raw) if brk < 0 else brk + 1
            head = raw[:split_at].decode("utf-8")
            pieces = [(head, False), (text[len(head):], True)]
        for piece, val in pieces:
            if piece:
                if pending:
                    yield pending
                pending = Chunk(piece, False, val)
        offset = end
    if pending:
        pending.doc_end = True
        yield pending


def _jsonl_chunks(path: Path, val_fraction: float) -> Iterator[Chunk]:
    with _open(path) as f:
        n_lines = sum(1 for line in f if line.strip())
    first_val = int(n_lines * (1.0 - val_fraction)) if val_fraction > 0 else n_lines
    index = 0
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{lineno} is not a JSON object with a 'text' field") from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: 'text' must be a string")
            if "\x00" in text:
                raise DataError(f"{path}:{lineno} contains NUL characters")
            if text:
                yield Chunk(text, True, index >= first_val)
            index += 1


def iter_chunks(inputs: list[str], val_fraction: float = 0.0,
                progress: Progress | None = None) -> Iterator[Chunk]:
    """Stream every input as bounded text chunks, marking document ends and the held-out tail."""
    files = expand_inputs(inputs)
    total = sum(f.stat().st_size for f in files)
    done, any_text = 0, False
    for path in files:
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        chunks = _jsonl_chunks if name.endswith(".jsonl") else _text_chunks
        for chunk in chunks(path, val_fraction):
            any_text = any_text or bool(chunk.text.strip())
            yield chunk
        done += path.stat().st_size
        if progress:
            progress(done, total)
    if not any_text:
        raise DataError(f"no text in {', '.join(inputs)}; the input is empty")


def iter_documents(inputs: list[str], progress: Progress | None = None) -> Iterator[tuple[bool, str]]:
    """``(doc_end, text)`` chunks of all inputs (no validation split)."""
    for chunk in iter_chunks(inputs, 0.0, progress):
        yield chunk.doc_end, chunk.text


def prepare(inputs: list[str], tokenizer_dir: str, out_dir: str, val_fraction: float = 0.01,
            progress: Progress | None = None, force: bool = False) -> dict:
    """Tokenize ``inputs`` into ``out_dir/{train,val}.bin`` + ``meta.json`` (atomically)."""
    from .checkpoint import atomic_directory
    from .tokenizer import load_tokenizer

    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    out = Path(out_dir)
    if out.exists() and not force:
        raise DataError(f"{out} already exists; pass --force or choose another --out")
    tok = load_tokenizer(tokenizer_dir)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    meta: dict = {}

    def write(tmp: Path) -> None:
        counts = {"train": 0, "val": 0}
        files = {s: open(tmp / f"{s}.bin", "wb") for s in counts}
        batch: list[Chunk] = []

        def flush() -> None:
            for chunk, ids in zip(batch, tok.encode_batch([c.text for c in batch])):
                if chunk.doc_end:
                    ids.append(tok.eos_token_id)
                split = "val" if chunk.val else "train"
                np.asarray(ids, dtype=dtype).tofile(files[split])
                counts[split] += len(ids)
            batch.clear()

        try:
            for chunk in iter_chunks(inputs, val_fraction, progress):
                batch.append(chunk)
                if len(batch) >= 8:
                    flush()
            flush()
        finally:
            for f in files.values():
                f.close()
        tok.save(tmp / "tokenizer")
        meta.update({"tokenizer": str(Path(tokenizer_dir).resolve()), "tokenizer_id": tok.identity,
                     "vocab_size": tok.vocab_size, "eos_token_id": tok.eos_token_id,
                     "dtype": np.dtype(dtype).name, "train_tokens": counts["train"],
                     "val_tokens": counts["val"], "inputs": [str(p) for p in inputs],
                     "val_fraction": val_fraction})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    atomic_directory(out, write)
    return meta


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"no prepared data in {data_dir} (meta.json missing); "
                        "run `cocomix data prepare` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"corrupt {path}: {e}; prepare the data again") from None


def check_vocab(meta: dict, model_vocab_size: int) -> None:
    if meta["vocab_size"] > model_vocab_size:
        raise DataError(f"the data was tokenized with a vocabulary of {meta['vocab_size']} but "
                        f"the model has {model_vocab_size}; use the same tokenizer for both")


class TokenDataset:
    """A memory-mapped token shard with deterministic training and evaluation batches."""

    def __init__(self, data_dir: str | Path, split: str):
        self.meta = load_meta(data_dir)
        path = Path(data_dir) / f"{split}.bin"
        if not path.exists():
            raise DataError(f"missing {path}; prepare the data again")
        size = path.stat().st_size
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

    def eval_batches(self, batch_size: int, seq_len: int, max_batches: int | None = None):
        """Consecutive non-overlapping windows from the start of the shard."""
        if len(self) < seq_len + 1:
            return
        n_windows = (len(self) - 1) // seq_len
        if max_batches:
            n_windows = min(n_windows, max_batches * batch_size)
        for first in range(0, n_windows, batch_size):
            yield self.take(range(first * seq_len, min(first + batch_size, n_windows) * seq_len,
                                  seq_len), seq_len)
