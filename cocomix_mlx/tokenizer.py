"""Tokenizers: sentencepiece BPE training, GPT-2 BPE files, Hugging Face tokenizer directories.

Every tokenizer is stored as a Hugging Face directory (``tokenizer.json`` and friends), which
``transformers.AutoTokenizer`` and mlx-lm load directly. A trained sentencepiece model keeps its
``tokenizer.model`` beside the equivalent ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import ConfigError, DataError
from .files import atomic_directory, refuse_existing, refuse_inputs

EOS = "<|endoftext|>"
SPECIALS = {"unk": "<unk>", "bos": "<s>", "eos": EOS}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
Progress = Callable[[int, "int | None"], None]


def _lines(chunks: Iterable[str], max_len: int = 4000) -> Iterator[str]:
    for chunk in chunks:
        for line in chunk.split("\n"):
            line = line.rstrip()
            while line:
                yield line[:max_len]
                line = line[max_len:]


def _sample(lines: Iterable[str], size: int, seed: int) -> list[str]:
    """A uniform sample of ``size`` lines in their order (all of them when there are fewer).

    sentencepiece's own sampler draws its seed from the OS, so the same files would give a
    different tokenizer in every process.
    """
    rng = random.Random(seed)
    kept: list[tuple[int, str]] = []
    for i, line in enumerate(lines):  # reservoir sampling, algorithm R
        if i < size:
            kept.append((i, line))
        else:
            j = rng.randrange(i + 1)
            if j < size:
                kept[j] = (i, line)
    return [line for _, line in sorted(kept)]


def _merges_from_vocab(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a sentencepiece BPE vocabulary, in priority order."""
    merges = []
    for piece, piece_id in vocab.items():
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                merges.append((piece_id, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def sentencepiece_to_hf(model_file: str | Path):
    """A ``tokenizers.Tokenizer`` that encodes exactly like the sentencepiece BPE model."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = _merges_from_vocab({p: i for p, i in vocab.items()
                                 if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=SPECIALS["unk"],
                               fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never",
                                                 split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens(list(SPECIALS.values()))
    return tok


def _save_hf(tok, out_dir: Path, bos: str | None, eos: str, unk: str | None) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   unk_token=unk, clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out_dir))


def _write_dir(out_dir: str | Path, force: bool, write: Callable[[Path], None],
               inputs: tuple = ()) -> Path:
    """Build ``out_dir`` in a temporary sibling and move it into place."""
    out = Path(out_dir)
    refuse_existing(out, force, inputs=inputs)
    atomic_directory(out, write)
    return out


def train_tokenizer(inputs: list[str], vocab_size: int, out_dir: str | Path,
                    progress: Progress | None = None, force: bool = False,
                    max_sentences: int = 2_000_000, seed: int = 0) -> Path:
    """Train a sentencepiece BPE tokenizer with byte fallback on text files.

    When the text holds more than ``max_sentences`` lines, sentencepiece trains on a random
    sample of them; ``seed`` fixes that sample, so the same files always give the same tokenizer.
    """
    import io

    import sentencepiece as spm

    from .text import iter_documents

    if vocab_size < 300:
        raise ConfigError("--vocab-size must be at least 300 (256 byte tokens + specials + merges)")

    def write(tmp: Path) -> None:
        model = io.BytesIO()
        lines = _sample(_lines(text for _, text in iter_documents(inputs, progress)),
                        max_sentences, seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
                character_coverage=0.9995, input_sentence_size=0,
                shuffle_input_sentence=False, max_sentence_length=16384, num_threads=2,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece=SPECIALS["unk"],
                bos_piece=SPECIALS["bos"], eos_piece=EOS, minloglevel=2)
        except RuntimeError as e:
            raise DataError(f"sentencepiece could not train on {', '.join(inputs)}: "
                            f"{str(e).splitlines()[-1]}; give more text or a smaller "
                            "--vocab-size") from None
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
        _save_hf(sentencepiece_to_hf(tmp / "tokenizer.model"), tmp, SPECIALS["bos"], EOS,
                 SPECIALS["unk"])

    return _write_dir(out_dir, force, write, inputs=tuple(inputs))


def tokenizer_from_gpt2_files(encoder_json: str | Path, vocab_bpe: str | Path,
                              out_dir: str | Path, force: bool = False) -> Path:
    """GPT-2's ``encoder.json`` + ``vocab.bpe`` as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    try:
        model = models.BPE.from_file(str(encoder_json), str(vocab_bpe))
    except Exception as e:  # tokenizers raises plain Exceptions on malformed files
        raise DataError(f"cannot read GPT-2 BPE files {encoder_json}, {vocab_bpe}: {e}") from None
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return _write_dir(out_dir, force, lambda tmp: _save_hf(tok, tmp, EOS, EOS, EOS),
                      inputs=(encoder_json, vocab_bpe))


def build_tokenizer(inputs: list[str], vocab_size: int, out_dir: str | Path,
                    force: bool = False, progress: Progress | None = None) -> dict:
    """``cocomix tokenizer train``: import an existing tokenizer or train a new one."""
    refuse_inputs(out_dir, inputs)
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / "tokenizer.json").exists():
        src = paths[0]
        _write_dir(out_dir, force, lambda tmp: load_tokenizer(src).save(tmp))
        kind = "Hugging Face"
    elif len(paths) == 1 and paths[0].is_dir() and (paths[0] / "encoder.json").exists():
        tokenizer_from_gpt2_files(paths[0] / "encoder.json", paths[0] / "vocab.bpe", out_dir, force)
        kind = "GPT-2 BPE"
    elif sorted(p.name for p in paths) == ["encoder.json", "vocab.bpe"]:
        files = {p.name: p for p in paths}
        tokenizer_from_gpt2_files(files["encoder.json"], files["vocab.bpe"], out_dir, force)
        kind = "GPT-2 BPE"
    else:
        train_tokenizer(inputs, vocab_size, out_dir, progress, force)
        kind = "sentencepiece BPE"
    return {"kind": kind, "vocab_size": load_tokenizer(out_dir).vocab_size}


class Tokenizer:
    """A Hugging Face fast tokenizer with the few operations data preparation needs."""

    def __init__(self, path: Path, tok, eos_token: str):
        self.path, self._tok = path, tok
        self.eos_token = eos_token
        eos_id = tok.token_to_id(eos_token)
        if eos_id is None:
            raise ConfigError(f"tokenizer in {path} has no id for its EOS token {eos_token!r}")
        self.eos_token_id = eos_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def identity(self) -> str:
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()[:16]

    def vocab(self) -> dict[str, int]:
        """Token → id, added tokens included."""
        return self._tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each token id stands for in decoded text (``b""`` for special tokens),
        so that a token sequence's text is the concatenation of its tokens' bytes. Read from the
        tokenizer's decoder: byte-level BPE (GPT-2, Llama 3, SmolLM2) and metaspace pieces with
        byte fallback (sentencepiece BPE)."""
        spec = json.loads(self._tok.to_str())
        decoders = spec.get("decoder") or {}
        decoders = decoders.get("decoders", [decoders]) if decoders.get("type") == "Sequence" \
            else [decoders]
        kinds = {d.get("type") for d in decoders}
        replace = [(d["pattern"].get("String", ""), d["content"]) for d in decoders
                   if d.get("type") == "Replace" and "String" in d.get("pattern", {})]
        replace += [(d.get("replacement", "\u2581"), " ") for d in decoders
                    if d.get("type") == "Metaspace"]
        if "ByteLevel" not in kinds and not replace:
            raise ConfigError(f"the tokenizer in {self.path} has a decoder this package cannot "
                              f"align ({', '.join(sorted(map(str, kinds)))}); use a byte-level or "
                              "sentencepiece BPE tokenizer")
        byte_of = _byte_level_decoder() if "ByteLevel" in kinds else None
        special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        table = []
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            if piece is None or i in special:
                table.append(b"")
            elif byte_of is not None:
                table.append(bytes(byte_of[c] for c in piece) if all(c in byte_of for c in piece)
                             else piece.encode("utf-8"))
            elif "ByteFallback" in kinds and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                table.append(bytes([int(piece[3:5], 16)]))
            else:
                for old, new in replace:
                    piece = piece.replace(old, new)
                table.append(piece.encode("utf-8"))
        return table

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (self.path / name).exists():
                shutil.copy2(self.path / name, out / name)


def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE's alphabet, inverted: each byte is written as one printable character, the
    printable Latin-1 bytes as themselves and the other bytes, in order, as code points 256, 257…"""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    others = [b for b in range(256) if b not in printable]
    shown = {chr(b): b for b in printable}
    shown.update({chr(256 + i): b for i, b in enumerate(others)})
    return shown


def has_tokenizer(path: str | Path) -> bool:
    path = Path(path)
    return (path / "tokenizer.json").exists() or ((path / "encoder.json").exists() and
                                                 (path / "vocab.bpe").exists())


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer directory: Hugging Face ``tokenizer.json`` or GPT-2 BPE files."""
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    if (path / "tokenizer.json").exists():
        try:
            tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:
            raise ConfigError(f"cannot read {path / 'tokenizer.json'}: {e}") from None
        eos = EOS
        cfg_path = path / "tokenizer_config.json"
        if cfg_path.exists():
            try:
                value = json.loads(cfg_path.read_text(encoding="utf-8")).get("eos_token") or EOS
            except json.JSONDecodeError as e:
                raise ConfigError(f"corrupt {cfg_path}: {e}") from None
            eos = value.get("content", EOS) if isinstance(value, dict) else value
        return Tokenizer(path, tok, eos)
    if (path / "encoder.json").exists() and (path / "vocab.bpe").exists():
        tmp = Path(tempfile.mkdtemp(prefix="cocomix-gpt2-tok-"))
        return load_tokenizer(tokenizer_from_gpt2_files(path / "encoder.json",
                                                        path / "vocab.bpe", tmp / "tok"))
    raise ConfigError(f"no tokenizer at {path}: expected tokenizer.json or encoder.json + "
                      "vocab.bpe; make one with `cocomix tokenizer train`")
