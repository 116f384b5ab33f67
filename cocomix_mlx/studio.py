"""The model behind ``cocomix serve``: one model per process and one worker thread that runs
every request to completion in turn, so MLX work (and each request's KV cache) never
interleaves; the pieces of the OpenAI completion protocol that do not depend on a web framework
(stop strings, log-probabilities, chat prompts); per-token concepts and the dictionary search
of the concept studio page.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn

from .errors import ConfigError
from .generate import predicted_concepts, sae_latents, sae_layer, stream
from .models.backbone import backbone
from .sae_analysis import names_of

MAX_STOPS = 4  # OpenAI's limit on stop strings


@dataclass
class Request:
    """One completion: the prompt's token ids and the OpenAI sampling fields (temperature 1 and
    top_p 1 by default, as OpenAI's), with ``steer``/``span`` as in ``cocomix generate``."""
    prompt: list[int]
    max_tokens: Optional[int] = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    logprobs: Optional[int] = None  # alternatives per token; None: no log-probabilities
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[int, float]] = None
    steer: dict[str, float] = field(default_factory=dict)
    span: str = "all"


@dataclass
class Piece:
    """What one generated token adds: ``text`` is the text released with it (text that could
    begin a stop string is held back until it cannot), ``logprob``/``top`` its log-probability
    and the ``top`` alternatives, ``finish_reason`` set on the last piece only."""
    text: str
    token: Optional[int]
    token_text: str = ""
    logprob: Optional[float] = None
    top: list[tuple[str, float]] = field(default_factory=list)
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (it may still
    become one, so it is not released yet)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def first_stop(text: str, stops: list[str]) -> int:
    """Index where the first stop string in ``text`` begins, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat: the tokenizer's chat template with the assistant's turn opened, or,
    for a tokenizer without one, a plain transcript ``Role: content`` ending in ``Assistant:``."""
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=True)
        except Exception as e:  # the template's own error (e.g. roles out of order)
            raise ConfigError(f"the model's chat template refused these messages: {e}") from None
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return tokenizer.encode("\n\n".join(lines + ["Assistant:"]))


def _top(logprobs: mx.array, n: int, decode) -> list[tuple[str, float]]:
    if n <= 0:
        return []
    index = mx.argpartition(-logprobs, n - 1)[:n]
    values = logprobs[index]
    order = mx.argsort(-values)
    return [(decode(int(i)), float(v)) for i, v in zip(index[order].tolist(),
                                                        values[order].tolist())]


class Studio:
    """A loaded model served to many clients. ``model`` is a CoCoMix model (steering and
    concepts through its concept head) or any model with ``sae`` (through the SAE's latents at
    block ``layer``); ``dictionary`` is the latents of a ``sae describe`` dictionary."""

    def __init__(self, model: nn.Module, tokenizer, model_id: str,
                 dictionary: Optional[list[dict]] = None, sae=None, layer: Optional[int] = None):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.sae = sae
        self.layer = sae_layer(model, sae, layer) if sae is not None else None
        self.dictionary = dictionary or []
        self.labels = {item["index"]: item["label"] for item in self.dictionary}
        self.names = names_of(self.dictionary)
        bb = backbone(model)
        self.context, self.vocab = bb.context, bb.vocab
        if sae is not None:
            self.kind, self.concept_count = "sae", sae.cfg.latents
        elif bb.has_concepts:
            self.kind, self.concept_count = "cocomix", model.args.concept_dim
        else:
            self.kind, self.concept_count = "plain", 0
        model.eval()
        self._jobs: queue.Queue = queue.Queue()
        self.stats = {"jobs": 0, "items": 0, "cancelled": 0}  # items: generated tokens, ...
        threading.Thread(target=self._work, name="cocomix-studio", daemon=True).start()

    # -- the worker ---------------------------------------------------------------------------

    def submit(self, make: Callable[[], Iterator], emit: Callable[[str, object], None],
               cancelled: threading.Event) -> None:
        """Queue a job: ``make()`` is iterated on the worker thread; each item goes to
        ``emit("item", x)``, then ``emit("done", None)`` or ``emit("error", exception)``. A
        job whose ``cancelled`` is set stops after its current item."""
        self._jobs.put((make, emit, cancelled))

    def _work(self) -> None:
        while True:
            make, emit, cancelled = self._jobs.get()
            self.stats["jobs"] += 1
            try:
                stopped = cancelled.is_set()
                if not stopped:
                    for item in make():
                        self.stats["items"] += 1
                        emit("item", item)
                        if cancelled.is_set():  # its client went away
                            stopped = True
                            break
                self.stats["cancelled"] += stopped
                emit("done", None)
            except Exception as e:  # noqa: BLE001 (handed to the waiting request)
                # a job that failed inside a compiled sampler can leave a placeholder in MLX's
                # random state, which would fail every later request: start it afresh
                mx.random.seed(int.from_bytes(os.urandom(8), "little"))
                emit("error", e)

    # -- the work -----------------------------------------------------------------------------

    def info(self) -> dict:
        return {"model": self.model_id, "kind": self.kind, "concepts": self.concept_count,
                "steerable": self.kind != "plain", "dictionary": len(self.dictionary),
                "layer": self.layer, "context": self.context, "served": dict(self.stats)}

    def complete(self, req: Request) -> Iterator[Piece]:
        """The pieces of one completion (runs on the worker)."""
        if len(req.stop) > MAX_STOPS:
            raise ConfigError(f"give at most {MAX_STOPS} stop strings")
        stops = [s for s in req.stop if s]
        responses = stream(
            self.model, self.tokenizer, req.prompt, max_tokens=req.max_tokens,
            temp=req.temperature, top_p=0.0 if req.top_p >= 1 else req.top_p, min_p=req.min_p,
            top_k=req.top_k, repetition_penalty=req.repetition_penalty, seed=req.seed,
            steer=req.steer, span=req.span, names=self.names, sae=self.sae, layer=self.layer,
            processors=dict(presence_penalty=req.presence_penalty,
                            frequency_penalty=req.frequency_penalty, logit_bias=req.logit_bias))
        decode = self._token_text
        text, released, count = "", 0, 0
        for r in responses:
            eos = r.finish_reason == "stop"
            piece = Piece("", None if eos else int(r.token), prompt_tokens=r.prompt_tokens)
            if not eos:
                count += 1
                text += r.text
                piece.token_text = decode(piece.token)
                if req.logprobs is not None:
                    piece.logprob = float(r.logprobs[piece.token])
                    piece.top = _top(r.logprobs, req.logprobs, decode)
            elif r.text:  # the detokenizer's last bytes
                text += r.text
            cut = first_stop(text, stops)
            end = cut if cut >= 0 else len(text) - held_back(text, stops)
            if cut >= 0 or r.finish_reason:
                end = cut if cut >= 0 else len(text)
                piece.finish_reason = "stop" if cut >= 0 else r.finish_reason
            piece.text, released = text[released:end], max(released, end)
            piece.completion_tokens = count
            yield piece
            if piece.finish_reason:
                return

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def concepts(self, text: str, top: int = 5) -> dict:
        """Per token of ``text``: the model's top predicted concepts (a CoCoMix model) or the
        SAE's top active latents (a model served with an SAE); runs on the worker."""
        if self.kind == "plain":
            raise ConfigError("this model has no concepts: serve a CoCoMix model, or a model "
                              "with --sae")
        if self.kind == "sae":
            rows = sae_latents(self.model, self.tokenizer, self.sae, text, top, self.labels,
                               self.layer)
            return {"object": "list", "kind": "sae", "value": "activation", "data": rows}
        rows = predicted_concepts(self.model, self.tokenizer, text, top, self.labels)
        return {"object": "list", "kind": "cocomix", "value": "logit", "data": rows}

    def search(self, query: str, limit: int = 20) -> list[dict]:
        """Live dictionary entries matching ``query`` (case-insensitive): by label (exact,
        then contained), index, promoted tokens, then top contexts; within each, the most
        matches first, then the most frequent. An empty query lists the most frequent."""
        q = query.strip().lower()
        hits = []
        for item in self.dictionary:
            if item["label"] == "dead":
                continue
            label = item["label"].lower()
            promoted = sum(q in p.lower() for p in item.get("promoted", []))
            contexts = sum(q in c["text"].lower() for c in item.get("contexts", []))
            tier = (1 if not q else 0 if label == q else 1 if q in label
                    else 2 if q == str(item["index"]) else 3 if promoted
                    else 4 if contexts else None)
            if tier is not None:
                hits.append((tier, -(promoted + contexts), -item.get("frequency", 0.0),
                             item["index"], item))
        hits.sort(key=lambda h: h[:4])
        return [h[4] for h in hits[:limit]]

def open_studio(model: str | Path, dictionary: Optional[str | Path] = None,
                sae: Optional[str | Path] = None, layer: Optional[int] = None,
                name: Optional[str] = None) -> Studio:
    """A :class:`Studio` for the checkpoint ``model`` (served as ``name``, by default its
    directory's name), with a ``sae describe`` dictionary and an SAE to read and steer."""
    import cocomix_mlx as cm
    from .sae_analysis import read_dictionary

    net, tokenizer = cm.load(model)
    latents = read_dictionary(dictionary) if dictionary is not None else None
    sae_model = cm.load_sae(sae) if sae is not None else None
    return Studio(net, tokenizer, name or Path(model).resolve().name, latents, sae_model, layer)
