"""Aligning a teacher that has its own tokenizer with the student's token stream (docs/labels.md).

The teacher reads the same text as the student: each document is decoded from the student's
tokens (the concatenation of the tokens' bytes) and encoded with the teacher's tokenizer, and the
teacher's stream puts its own EOS token between documents, as ``data prepare`` would have done
with the teacher's tokenizer. Student position ``s`` then takes the labels of the last teacher
position whose token ends at or before the end of student token ``s``: the teacher position that
predicts what follows the same prefix of text (or the longest prefix the teacher can stop at).
Student positions with no such teacher position in the same document, and the student's EOS
positions (whose next token starts a new document), get no label (``-1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .tokenizer import Tokenizer

MAX_PIECE = 1 << 15  # student tokens per piece a long document is read in


def last_ending_at_or_before(student_ends: np.ndarray, teacher_ends: np.ndarray) -> np.ndarray:
    """For each student token end (non-decreasing byte offsets), the index of the last teacher
    token whose end is at or before it, or -1 where none is."""
    return np.searchsorted(teacher_ends, student_ends, side="right").astype(np.int64) - 1


def byte_ends(ids, table: list[bytes]) -> np.ndarray:
    """Byte offset at which each token ends in the concatenation of the tokens' bytes."""
    return np.cumsum(np.fromiter((len(table[i]) for i in ids), dtype=np.int64, count=len(ids)))


def pieces(tokens: np.ndarray, eos: int, newline: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, doc_end)`` spans of a student stream: documents without their EOS, a long
    one cut into pieces of at most :data:`MAX_PIECE` tokens after a token that ends a line."""
    n, start = len(tokens), 0
    while start < n:
        block = np.asarray(tokens[start:start + MAX_PIECE + 1])
        hits = np.flatnonzero(block == eos)
        if len(hits):
            end = start + int(hits[0])
            yield start, end, True
            start = end + 1
        elif len(block) <= MAX_PIECE:  # the stream's tail, with no EOS after it
            yield start, n, False
            start = n
        else:
            lines = np.flatnonzero(newline[block[:MAX_PIECE]])
            end = start + (int(lines[-1]) + 1 if len(lines) else MAX_PIECE)
            yield start, end, False
            start = end


def _groups(spans: Iterator[tuple[int, int, bool]], tokens: int = 1 << 18):
    group, size = [], 0
    for span in spans:
        group.append(span)
        size += span[1] - span[0] + 1
        if size >= tokens:
            yield group
            group, size = [], 0
    if group:
        yield group


def align(tokens: np.ndarray, student: Tokenizer, teacher: Tokenizer,
          teacher_out: Path, map_out: Path,
          progress: Callable[[int], None] | None = None) -> int:
    """Write the teacher's token stream for ``tokens`` (uint32, ``teacher_out``) and, per student
    position, the teacher position whose labels it takes or -1 (int64 ``.npy``, ``map_out``).
    Memory stays bounded by a group of pieces. Returns the teacher stream's length."""
    table_s, table_t = student.token_bytes(), teacher.token_bytes()
    newline = np.array([b.endswith(b"\n") for b in table_s], dtype=bool)
    mapping = np.lib.format.open_memmap(map_out, mode="w+", dtype=np.int64,
                                        shape=(len(tokens),))
    offset = 0
    with open(teacher_out, "wb") as out:
        for group in _groups(pieces(tokens, student.eos_token_id, newline)):
            texts = []
            for start, end, _ in group:
                mapping[start:end + 1 if end < len(tokens) else end] = -1
                try:
                    texts.append(b"".join(table_s[i] for i in tokens[start:end]).decode("utf-8"))
                except UnicodeDecodeError:
                    texts.append("")  # a piece that is not UTF-8 text gets no labels
            encoded = teacher.encode_batch(texts)
            for (start, end, doc_end), text, t_ids in zip(group, texts, encoded):
                if t_ids:
                    t_ends = byte_ends(t_ids, table_t)
                    if t_ends[-1] != len(text.encode("utf-8")):
                        t_ends = _offset_ends(teacher, text)
                    where = last_ending_at_or_before(byte_ends(tokens[start:end], table_s), t_ends)
                    mapping[start:end] = np.where(where >= 0, where + offset, -1)
                    np.asarray(t_ids, dtype=np.uint32).tofile(out)
                    offset += len(t_ids)
                if doc_end:
                    np.asarray([teacher.eos_token_id], dtype=np.uint32).tofile(out)
                    offset += 1
            if progress:
                progress(group[-1][1])
    mapping.flush()
    return offset


def _offset_ends(teacher: Tokenizer, text: str) -> np.ndarray:
    """Teacher token ends from the tokenizer's character offsets, for tokenizers whose tokens do
    not spell the text byte for byte (normalizers): character ends converted to byte ends."""
    enc = teacher._tok.encode(text, add_special_tokens=False)
    char_bytes = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])])
    return char_bytes[np.array([e for _, e in enc.offsets], dtype=np.int64)]
