"""Reading text: ``.txt`` / ``.gz`` files, folders of them, ``.jsonl`` (one document per line in
a field, ``text`` by default) and Parquet files (one document per row of a string column; needs
pyarrow), streamed in chunks with bounded memory; the tail of each input can be held out for
validation. A text file is one document."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

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
        raise DataError(f"no text files (.txt, .gz, .jsonl, .parquet) in {', '.join(inputs)}")
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


def _parquet_chunks(path: Path, val_fraction: float, field: str) -> Iterator[Chunk]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError('reading Parquet needs pyarrow: pip install "cocomix-mlx[data]"') from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses on bad files
        raise DataError(f"cannot read {path} as Parquet: {e}") from None
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path} has no column '{field}' (columns: "
                        f"{', '.join(pf.schema_arrow.names)}); pass --text-field NAME")
    n_rows = pf.metadata.num_rows
    first_val = int(n_rows * (1.0 - val_fraction)) if val_fraction > 0 else n_rows
    index = 0
    for batch in pf.iter_batches(batch_size=PARQUET_ROWS, columns=[field]):
        for text in batch.column(0).to_pylist():
            chunk = _document(path, f"row {index}", "" if text is None else text, field)
            if chunk:
                chunk.val = index >= first_val
                yield chunk
            index += 1


def _jsonl_chunks(path: Path, val_fraction: float, field: str) -> Iterator[Chunk]:
    with _open(path) as f:
        n_lines = sum(1 for line in f if line.strip())
    first_val = int(n_lines * (1.0 - val_fraction)) if val_fraction > 0 else n_lines
    index = 0
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{lineno} is not a JSON object with a '{field}' field; "
                                "pass --text-field NAME") from None
            chunk = _document(path, str(lineno), text, field)
            if chunk:
                chunk.val = index >= first_val
                yield chunk
            index += 1


def iter_chunks(inputs: list[str], val_fraction: float = 0.0,
                progress: Progress | None = None, text_field: str = "text") -> Iterator[Chunk]:
    """Stream every input as bounded text chunks, marking document ends and the held-out tail
    (``text_field``: the JSONL field or Parquet column holding each document)."""
    files = expand_inputs(inputs)
    total = sum(f.stat().st_size for f in files)
    done, any_text = 0, False
    for path in files:
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        if name.endswith(".jsonl") or path.suffix == ".parquet":
            reader = _jsonl_chunks if name.endswith(".jsonl") else _parquet_chunks
            chunks = reader(path, val_fraction, text_field)
        else:
            chunks = _text_chunks(path, val_fraction)
        try:
            for chunk in chunks:
                any_text = any_text or bool(chunk.text.strip())
                yield chunk
        except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated .gz
            raise DataError(f"cannot read {path}: {e or type(e).__name__}; the file is corrupt "
                            "or truncated") from None
        done += path.stat().st_size
        if progress:
            progress(done, total)
    if not any_text:
        raise DataError(f"no text in {', '.join(inputs)}; the input is empty")


def iter_documents(inputs: list[str], progress: Progress | None = None) -> Iterator[tuple[bool, str]]:
    """``(doc_end, text)`` chunks of all inputs (no validation split)."""
    for chunk in iter_chunks(inputs, 0.0, progress):
        yield chunk.doc_end, chunk.text
