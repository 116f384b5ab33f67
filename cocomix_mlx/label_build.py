"""Building a label store: the teacher over fixed windows, once (see :mod:`cocomix_mlx.labels`).

Both splits are labelled in ``.NAME.partial`` beside the output, batch by batch, with progress
recorded every few seconds; ``resume`` continues from the last record and writes the same bytes
an uninterrupted build would. A teacher with its own tokenizer first gets its token stream and
the student-to-teacher position map (:mod:`cocomix_mlx.align`), then labels its own positions,
which are gathered into the student's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from .files import refuse_existing, swap_in, write_json
from .data import TokenDataset, load_meta
from .errors import ConfigError, DataError
from .label_store import (DEFAULT_MAX_WINDOW, FORMAT, KINDS, SPLITS, BuildConfig, Progress,
                          data_identity, sae_identity, teacher_identity, window_count,
                          window_span)

SAVE_SECONDS = float(os.environ.get("COCOMIX_LABELS_SAVE_SECONDS", "5"))  # progress records
BLOCK = 1 << 22  # positions per pass over a whole memory-mapped array


def _reserve(file: Path) -> None:
    """Allocate the disk blocks of a sparse memory-mapped file now: on a full disk this raises
    ENOSPC here, where writing into the mapping later would kill the process with SIGBUS."""
    if hasattr(os, "posix_fallocate"):  # Linux; macOS has no such call
        with open(file, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, file.stat().st_size)


def _arrays(path: Path, n: int, k: int, dtype, fresh: bool):
    """``(labels, flags)`` .npy memmaps at ``path`` prefix, created or reopened."""
    if n == 0:  # np.memmap cannot map an empty file: plain empty arrays, saved as such
        labels, flags = np.zeros((0, k), dtype), np.zeros(0, np.uint8)
        np.save(f"{path}.labels.npy", labels)
        np.save(f"{path}.flags.npy", flags)
        return labels, flags
    if fresh:
        arrays = (np.lib.format.open_memmap(f"{path}.labels.npy", "w+", dtype, (n, k)),
                  np.lib.format.open_memmap(f"{path}.flags.npy", "w+", np.uint8, (n,)))
        for suffix in ("labels", "flags"):
            _reserve(Path(f"{path}.{suffix}.npy"))
        return arrays
    return (np.load(f"{path}.labels.npy", mmap_mode="r+"),
            np.load(f"{path}.flags.npy", mmap_mode="r+"))


class _Builder:
    def __init__(self, teacher_dir: Path, sae_dir: Path, data_dir: Path, cfg: BuildConfig):
        import mlx.core as mx

        from .concepts import activation_labels, attribution_labels, check_sae
        from .models.backbone import backbone
        from .models.sae import load_sae
        from .objectives import load_frozen
        from .tokenizer import load_tokenizer

        if cfg.kind not in KINDS:
            raise ConfigError(f"--labels must be attribution or activation, not {cfg.kind!r}")
        self.data_meta = load_meta(data_dir)
        self.teacher, tconfig = load_frozen(teacher_dir)
        self.sae = load_sae(sae_dir)
        self.sae.set_dtype(mx.float32)
        self.sae.freeze()
        check_sae(self.teacher, self.sae)
        if cfg.layer < 0:
            if self.sae.cfg.layer is None:
                raise ConfigError("the SAE does not record its layer; pass --layer N")
            cfg.layer = self.sae.cfg.layer
        bb = backbone(self.teacher)
        bb.check_layer(cfg.layer)
        if not 0 < cfg.k_attr <= self.sae.cfg.k:
            raise ConfigError(f"--k-attr {cfg.k_attr} must be in 1..{self.sae.cfg.k} (the SAE's k)")
        context = bb.context
        cfg.window = cfg.window or min(context, DEFAULT_MAX_WINDOW)
        if cfg.window > context:
            raise ConfigError(f"--window {cfg.window} is longer than the teacher's context "
                              f"({context} tokens); give --window {context} or less")
        cfg.stride = cfg.stride or max(1, cfg.window // 2)
        if cfg.window < 2 or not 0 < cfg.stride <= cfg.window or cfg.batch_size < 1:
            raise ConfigError(f"need --window >= 2, 1 <= --stride <= --window and --batch-size "
                              f">= 1 (got {cfg.window}, {cfg.stride}, {cfg.batch_size})")
        self.student_tok = load_tokenizer(Path(data_dir) / "tokenizer")
        self.teacher_tok = load_tokenizer(teacher_dir)
        self.same = self.student_tok.identity == self.teacher_tok.identity
        vocab = tconfig.get("vocab_size") or self.teacher.args.vocab_size
        if self.same and self.data_meta["vocab_size"] > vocab:
            raise DataError(f"the data's vocabulary ({self.data_meta['vocab_size']}) is larger "
                            f"than the teacher's ({vocab})")
        if not self.same:
            self.student_tok.token_bytes(), self.teacher_tok.token_bytes()  # both alignable
        fn = attribution_labels if cfg.kind == "attribution" else activation_labels
        teacher, sae, layer, k = self.teacher, self.sae, cfg.layer, cfg.k_attr
        self.labels_fn = mx.compile(lambda x: fn(teacher, sae, x, layer, k))
        self.cfg = cfg
        self.dtype = np.uint16 if self.sae.cfg.latents <= 2**16 else np.uint32
        self.meta = {
            "format": FORMAT, "complete": False, "kind": cfg.kind, "k_attr": cfg.k_attr,
            "layer": cfg.layer, "window": cfg.window, "stride": cfg.stride,
            "batch_size": cfg.batch_size, "label_dtype": np.dtype(self.dtype).name,
            "aligned": not self.same,
            "teacher": {"path": str(teacher_dir), "identity": teacher_identity(teacher_dir),
                        "tokenizer_id": self.teacher_tok.identity, "context": context,
                        "width": self.sae.cfg.d},
            "sae": {"path": str(sae_dir), "identity": sae_identity(sae_dir),
                    "latents": self.sae.cfg.latents, "k": self.sae.cfg.k},
            "data": {"path": str(data_dir), "identity": data_identity(data_dir, self.data_meta),
                     "tokenizer_id": self.data_meta.get("tokenizer_id"),
                     "vocab_size": self.data_meta["vocab_size"]},
        }

    def label_stream(self, stream: np.ndarray, prefix: Path, state: dict, save, tick) -> None:
        """Label every position of ``stream`` into ``prefix``.labels/.flags, resuming at
        ``state["batches"]``; ``save()`` records progress, ``tick(n)`` reports n positions."""
        import mlx.core as mx

        c, n = self.cfg, len(stream)
        labels, flags = _arrays(prefix, n, c.k_attr, self.dtype, fresh=state["batches"] == 0)
        if n < 2:  # no next token to attribute
            return
        count = window_count(n, c.window, c.stride)
        batches = -(-count // c.batch_size)
        if state["batches"]:
            tick(window_span(min(count, state["batches"] * c.batch_size) - 1, n, c.window,
                             c.stride)[2])
        last_save = time.monotonic()
        for b in range(state["batches"], batches):
            spans = [window_span(j, n, c.window, c.stride)
                     for j in range(b * c.batch_size, min(count, (b + 1) * c.batch_size))]
            rows = [np.asarray(stream[s:s + min(n, c.window)], dtype=np.int32) for s, _, _ in spans]
            rows += [rows[-1]] * (c.batch_size - len(rows))  # same shape and loss scale always
            out, valid = self.labels_fn(mx.array(np.stack(rows)))
            out, valid = np.array(out), np.array(valid)
            for r, (s, lo, hi) in enumerate(spans):
                labels[lo:hi] = out[r, lo - s:hi - s]
                flags[lo:hi] = 1 + valid[r, lo - s:hi - s].astype(np.uint8)
            tick(spans[-1][2] - spans[0][1])
            if b + 1 == batches or time.monotonic() - last_save > SAVE_SECONDS:
                labels.flush()
                flags.flush()
                state["batches"] = b + 1
                save()
                last_save = time.monotonic()


def build(teacher: str | Path, sae: str | Path, data: str | Path, out: str | Path,
          cfg: BuildConfig | None = None, resume: bool = False, force: bool = False,
          progress: Optional[Progress] = None) -> dict:
    """Build the label store ``out`` for both splits of ``data``; returns its ``meta``.

    The store is written in ``.NAME.partial`` beside ``out`` and moved into place when complete;
    an interrupted build continues there with ``resume`` and gives the same bytes.
    """
    out, data, teacher, sae = Path(out), Path(data), Path(teacher), Path(sae)
    partial = out.with_name(f".{out.name}.partial")
    if resume and force:
        raise ConfigError("--resume and --force exclude each other")
    refuse_existing(out, force, inputs=(data, teacher, sae))
    if partial.exists() and not resume:
        if not force:
            raise ConfigError(f"an interrupted build of {out} is in {partial}; pass --resume to "
                              "continue it or --force to start again")
        shutil.rmtree(partial)
    if resume and not partial.exists():
        raise ConfigError(f"nothing to resume for {out}; drop --resume to start a build")
    builder = _Builder(teacher, sae, data, cfg or BuildConfig())
    meta, progress_path = builder.meta, partial / "progress.json"
    if resume:
        try:
            before = json.loads((partial / "meta.json").read_text(encoding="utf-8"))
            state = json.loads(progress_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"the interrupted build in {partial} stopped before its first "
                              "record; pass --force to start again") from None
        if _settings(before) != _settings(meta):
            raise ConfigError(f"the interrupted build in {partial} used other settings, teacher, "
                              "SAE or data; pass --force to start again")
    else:
        partial.mkdir(parents=True)
        write_json(partial / "meta.json", meta)
        state = {s: {"aligned": -1, "batches": 0, "gathered": False} for s in SPLITS}
        write_json(progress_path, state)

    splits = {s: TokenDataset(data, s).tokens for s in SPLITS}
    total = sum(len(t) for t in splits.values())
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(min(done[0], total), total)

    def save() -> None:
        write_json(progress_path, state)

    try:
        for name, tokens in splits.items():
            _split(builder, partial, name, tokens, state[name], save, tick)
    except OSError as e:
        raise DataError(f"cannot write the label store in {partial}: {e}; make room and pass "
                        "--resume") from None

    for name, tokens in splits.items():
        _, flags = _arrays(partial / name, len(tokens), meta["k_attr"], builder.dtype, False)
        counts = sum((np.bincount(flags[a:a + BLOCK], minlength=3)
                      for a in range(0, len(flags), BLOCK)), np.zeros(3, np.int64))
        meta[name] = {"tokens": len(tokens), "labelled": int(counts[2]), "zero": int(counts[1]),
                      "teacher_tokens": len(tokens) if builder.same else state[name]["aligned"]}
    meta["complete"] = True
    meta["build"] = asdict(builder.cfg)
    write_json(partial / "meta.json", meta)
    progress_path.unlink()
    if force and out.exists():
        swap_in(partial, out)
    else:
        partial.rename(out)
    return meta


def _settings(meta: dict) -> dict:
    """A build's identity for resuming: everything in ``meta`` but where the inputs were."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "path"} if isinstance(v, dict) else v)
            for k, v in meta.items()}


def _split(builder: _Builder, partial: Path, name: str, tokens: np.ndarray, st: dict, save,
           tick) -> None:
    """Label one split; a teacher with its own tokenizer aligns, labels its stream, gathers."""
    from . import align

    if builder.same:
        builder.label_stream(tokens, partial / name, st, save, tick)
        return
    if st["gathered"]:
        tick(len(tokens))
        return
    tbin, tmap = partial / f"{name}.teacher.bin", partial / f"{name}.map.npy"
    if st["aligned"] < 0:
        st["aligned"] = align.align(tokens, builder.student_tok, builder.teacher_tok, tbin,
                                    tmap) if len(tokens) else 0
        save()
    stream = np.memmap(tbin, np.uint32, "r") if st["aligned"] else np.zeros(0, np.uint32)
    scale = len(tokens) / max(1, len(stream))  # progress counts the student's tokens
    builder.label_stream(stream, partial / f"{name}.teacher", st, save,
                         lambda n: tick(round(n * scale)))
    _gather(partial, name, len(tokens), builder.cfg.k_attr, builder.dtype)
    st["gathered"] = True
    save()
    for suffix in (".teacher.bin", ".map.npy", ".teacher.labels.npy", ".teacher.flags.npy"):
        (partial / f"{name}{suffix}").unlink(missing_ok=True)


def _gather(partial: Path, name: str, n: int, k: int, dtype, block: int = BLOCK) -> None:
    """Student labels from the teacher positions the alignment picked (flag 0 where none)."""
    labels, flags = _arrays(partial / name, n, k, dtype, fresh=True)
    if n == 0:
        return
    mapping = np.load(partial / f"{name}.map.npy", mmap_mode="r")
    t_labels, t_flags = _arrays(partial / f"{name}.teacher", 1, k, dtype, fresh=False)
    if len(t_flags) == 0:  # an empty teacher stream: nothing is labelled
        t_labels, t_flags = np.zeros((1, k), dtype), np.zeros(1, np.uint8)
    for a in range(0, n, block):
        idx = np.asarray(mapping[a:a + block])
        ok = idx >= 0
        safe = np.where(ok, idx, 0)
        labels[a:a + block] = np.where(ok[:, None], t_labels[safe], 0)
        flags[a:a + block] = np.where(ok, t_flags[safe], 0)
    labels.flush()
    flags.flush()


