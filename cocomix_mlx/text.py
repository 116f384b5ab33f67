"""Reading text: ``.txt`` / ``.gz`` files, folders of them, ``.jsonl`` (one document per line in
a field, ``text`` by default) and Parquet files (one document per row of a string column; needs
pyarrow), streamed in chunks with bounded memory; the tail of each input can be held out for
validation. A text file is one document."""

from __future__ import annotations

import codecs
import gzip
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import DataError

BLOCK = 1 << 20
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".gz", ".jsonl", ".parquet")
PARQUET_ROWS = 1024  # rows per record batch read from a Parquet file
Progress = Callable[[int, "int | None"], None]


@dataclass
class Chunk:
    text: str
    doc_end: bool  # the document ends with this chunk
    val: bool  # the chunk belongs to the validation split
    file_end: bool = False  # the last chunk of its input file


class RemoteFile:
    """An input fetched only when reading reaches it (a file of a Hub dataset): ``name`` (its
    kind is read from the suffix), ``size`` in bytes, and ``fetch()`` → its local path."""

    name: str = ""
    size: int = 0

    def fetch(self) -> Path:
        raise NotImplementedError


def expand_inputs(inputs: list) -> list:
    """Local files (folders expanded) and remote files, in order."""
    files: list = []
    for item in inputs:
        if isinstance(item, RemoteFile):
            files.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and p.name.endswith(TEXT_SUFFIXES) and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not files:
        raise DataError("no text files (.txt, .gz, .jsonl, .parquet) in "
                        f"{', '.join(map(str, inputs))}")
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
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e or type(e).__name__}; the file is corrupt or "
                        "truncated") from None


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


def _document(path: Path, where: str, text, field: str) -> Chunk | None:
    """One document's chunk (None when empty); ``text`` is the value of ``field``."""
    if not isinstance(text, str):
        raise DataError(f"{path}:{where}: '{field}' must be a string")
    if "\x00" in text:
        raise DataError(f"{path}:{where} contains NUL characters")
    return Chunk(text, True, False) if text else None


def _parquet_file(path: Path, field: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError('reading Parquet needs pyarrow: pip install "cocomix-mlx[data]"') from None
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering reads far ahead
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses on bad files
        raise DataError(f"cannot read {path} as Parquet: {e}") from None
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path} has no column '{field}' (columns: "
                        f"{', '.join(pf.schema_arrow.names)}); pass --text-field NAME")
    return pf


def _parquet_rows(path: Path, field: str) -> Iterator[Chunk | None]:
    index = 0
    for batch in _parquet_file(path, field).iter_batches(batch_size=PARQUET_ROWS,
                                                          columns=[field]):
        for text in batch.column(0).to_pylist():
            yield _document(path, f"row {index}", "" if text is None else text, field)
            index += 1


def _jsonl_rows(path: Path, field: str) -> Iterator[Chunk | None]:
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{lineno} is not a JSON object with a '{field}' field; "
                                "pass --text-field NAME") from None
            yield _document(path, str(lineno), text, field)


def _kind(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return "jsonl" if name.endswith(".jsonl") else "parquet" if name.endswith(".parquet") \
        else "text"


def _count_rows(path: Path, field: str) -> int:
    """Documents in a file: its rows (blank JSONL lines are not rows); a text file is one."""
    kind = _kind(path)
    if kind == "parquet":
        return _parquet_file(path, field).metadata.num_rows
    if kind == "jsonl":
        with _open(path) as f:
            return sum(1 for line in f if line.strip())
    return 1


def held_out_documents(counts: list[int], val_fraction: float, seed: int) -> np.ndarray:
    """Which of ``sum(counts)`` documents form the validation split: those Hugging Face
    ``datasets``' ``train_test_split(test_size=val_fraction, seed=seed, shuffle=True)`` puts in
    its test split (the first ``ceil(val_fraction · n)`` of ``default_rng(seed).permutation(n)``)."""
    n = sum(counts)
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed).permutation(n)[:math.ceil(val_fraction * n)]] = True
    return held


def _file_chunks(path: Path, val_fraction: float, field: str,
                 held: np.ndarray | None) -> Iterator[Chunk]:
    """The chunks of one input; ``held``: its documents' validation flags (else the tail)."""
    kind = _kind(path)
    if kind == "text":
        for chunk in _text_chunks(path, val_fraction if held is None else 0.0):
            chunk.val = chunk.val if held is None else bool(held[0])
            yield chunk
        return
    if held is None:
        n = _count_rows(path, field)
        first_val = int(n * (1.0 - val_fraction)) if val_fraction > 0 else n
        held = np.arange(n) >= first_val
    rows = _jsonl_rows if kind == "jsonl" else _parquet_rows
    for index, chunk in enumerate(rows(path, field)):
        if chunk:
            chunk.val = bool(held[index])
            yield chunk


def iter_chunks(inputs: list[str], val_fraction: float = 0.0,
                progress: Progress | None = None, text_field: str = "text",
                split_seed: int | None = None) -> Iterator[Chunk]:
    """Stream every input as bounded text chunks, marking document ends and the validation
    split: the tail ``val_fraction`` of each input, or with ``split_seed`` whole documents drawn
    as :func:`held_out_documents` draws them (``text_field``: the JSONL field or Parquet column
    holding each document)."""
    files = expand_inputs(inputs)
    total = sum(f.size if isinstance(f, RemoteFile) else f.stat().st_size for f in files)
    done, any_text = 0, False
    held, offsets = None, [0]
    if split_seed is not None:  # every file is needed up front to count its documents
        files = [f.fetch() if isinstance(f, RemoteFile) else f for f in files]
        counts = [_count_rows(p, text_field) for p in files]
        held = held_out_documents(counts, val_fraction, split_seed)
        offsets = np.cumsum([0] + counts).tolist()
    for i, path in enumerate(files):
        path = path.fetch() if isinstance(path, RemoteFile) else path
        mine = None if held is None else held[offsets[i]:offsets[i + 1]]
        chunks = _file_chunks(path, val_fraction, text_field, mine)
        try:
            last = None
            for chunk in chunks:
                any_text = any_text or bool(chunk.text.strip())
                if last:
                    yield last
                last = chunk
            if last:
                last.file_end = True
                yield last
        except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated .gz
            raise DataError(f"cannot read {path}: {e or type(e).__name__}; the file is corrupt "
                            "or truncated") from None
        done += path.stat().st_size
        if progress:
            progress(done, total)
    if not any_text:
        raise DataError(f"no text in {', '.join(map(str, inputs))}; the input is empty")


def iter_documents(inputs: list[str], progress: Progress | None = None) -> Iterator[tuple[bool, str]]:
    """``(doc_end, text)`` chunks of all inputs (no validation split)."""
    for chunk in iter_chunks(inputs, 0.0, progress):
        yield chunk.doc_end, chunk.text
