"""lm-evaluation-harness for every checkpoint kind we load (NTP GPT-2, CoCoMix — its logits are
read at the concept slots —, converted Llama-family, quantized), steered or not.

:class:`HarnessLM` implements lm-eval's three requests with our models and KV cache, following
the conventions of lm-eval's own Hugging Face model so that the same checkpoint scores the same:
trailing spaces of a context move to its continuation, an empty context is the BOS token (else
end-of-text),
inputs are cut from the left to the model's context, and rolling log-likelihoods use lm-eval's
disjoint windows. Needs the optional ``eval`` extra (``lm-eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx

from .errors import ConfigError
from .models.backbone import backbone

PAPER_TASKS = ["lambada_openai", "wikitext", "hellaswag", "piqa", "social_iqa", "arc_easy",
               "winogrande"]
# The paper's Table 1 columns: (task, lm-eval metric, column title).
PAPER_COLUMNS = [("lambada_openai", "perplexity", "LAMBADA ppl"), ("lambada_openai", "acc",
                 "LAMBADA acc"), ("wikitext", "word_perplexity", "WikiText ppl"),
                 ("hellaswag", "acc_norm", "HellaSwag"), ("piqa", "acc", "PIQA"),
                 ("social_iqa", "acc", "SIQA"), ("arc_easy", "acc", "ARC-Easy"),
                 ("winogrande", "acc", "WinoGrande")]


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise ConfigError('lm-eval is not installed: pip install "cocomix-mlx[eval]"') from None
    return LM


def harness_lm(model, tokenizer, batch_size: int = 8, max_gen_toks: int = 256,
               steer: Optional[dict] = None, names: Optional[dict[str, int]] = None):
    """An lm-eval ``LM`` of ``model`` (any model ``cocomix_mlx.load`` returns) and its mlx-lm
    tokenizer; ``steer`` ({concept: alpha}, as ``generate --steer``) steers every position."""
    from .generate import steered

    LM = _lm_base()
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, not {batch_size}")
    forward = steered(model, steer, 0, "all", names)

    class HarnessLM(LM):
        def __init__(self):
            super().__init__()
            self.model, self.forward, self.tokenizer = model, forward, tokenizer
            self.batch_size, self.max_gen_toks = batch_size, max_gen_toks
            self.max_length = backbone(model).context
            bos = tokenizer.bos_token_id  # what a context-free prediction conditions on
            self.prefix = tokenizer.eos_token_id if bos is None else bos
            model.eval()

        def encode(self, text: str) -> list[int]:
            return list(self.tokenizer.encode(text, add_special_tokens=False))

        def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            if not context:
                return [self.prefix], self.encode(continuation)
            whole, head = self.encode(context + continuation), self.encode(context)
            return head, whole[len(head):]

        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            """Log-probability of each continuation after its context, and whether greedy
            decoding would produce it; batched, longest first, padded on the right."""
            order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0] + pairs[i][1]))
            out: list = [None] * len(pairs)
            for start in range(0, len(order), self.batch_size):
                ids = order[start:start + self.batch_size]
                rows = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1):][:-1] for i in ids]
                width = max(len(r) for r in rows)
                batch = mx.array([r + [0] * (width - len(r)) for r in rows])
                logits = self.forward(batch).astype(mx.float32)
                logprobs = logits - mx.logsumexp(logits, -1, keepdims=True)
                totals, greedy = [], []
                for row, i in enumerate(ids):
                    end = len(rows[row])  # a continuation longer than the window: its last
                    cont = pairs[i][1][-end:]  # end tokens, all the window can predict
                    lp = logprobs[row, end - len(cont):end]
                    target = mx.array(cont)
                    totals.append(mx.take_along_axis(lp, target[:, None], -1).sum())
                    greedy.append(mx.all(mx.argmax(lp, -1) == target))
                totals, greedy = mx.stack(totals).tolist(), mx.stack(greedy).tolist()
                for row, i in enumerate(ids):  # one evaluation per batch, not two per row
                    out[i] = (totals[row], bool(greedy[row]))
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._score([self._pair(*r.args) for r in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            totals = []
            for r in requests:
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=self.encode(r.args[0]), prefix_token=self.prefix,
                    max_seq_len=self.max_length, context_len=1)]
                totals.append(sum(lp for lp, _ in self._score(windows)))
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False):
            from .generate import stream

            results = []
            for r in requests:
                context, kwargs = r.args
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                limit = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                            self.max_length - 1)
                ids = (self.encode(context) or [self.prefix])[-(self.max_length - limit):]
                text = ""
                for response in stream(self.model, self.tokenizer, ids, max_tokens=limit,
                                       steer=steer, span="all", names=names):
                    text += response.text
                    if any(u in text for u in until):
                        break
                for u in until:
                    text = text.split(u)[0]
                results.append(text)
            return results

    return HarnessLM()


def resolve_tasks(tasks: list[str]) -> list[str]:
    """``paper`` expands to the paper's seven tasks."""
    out: list[str] = []
    for t in tasks:
        out += PAPER_TASKS if t == "paper" else [t]
    return list(dict.fromkeys(out))


def evaluate(model, tokenizer, tasks: list[str], limit: Optional[float] = None,
             num_fewshot: Optional[int] = None, batch_size: int = 8,
             include: Optional[str | Path] = None, steer: Optional[dict] = None,
             names: Optional[dict[str, int]] = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of lm-eval's tasks (``include``: a folder of task YAMLs
    of your own) for ``model``, steered by ``steer`` when given."""
    lm = harness_lm(model, tokenizer, batch_size, steer=steer, names=names)
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include) if include else None)
    task_names = resolve_tasks(tasks)
    unknown = [t for t in task_names if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s): {', '.join(unknown)}; see `lm-eval ls "
                          "tasks`, or --include a folder of task YAMLs")
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=task_names, num_fewshot=num_fewshot,
                                      limit=limit, task_manager=manager, bootstrap_iters=0,
                                      batch_size=batch_size, log_samples=False)
    except (ConnectionError, OSError) as e:
        raise ConfigError(f"lm-eval could not load a task's data ({str(e).splitlines()[0]}); "
                          "it needs the Hugging Face Hub or a cached copy") from None
    return {task: {k.split(",")[0]: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not k.startswith(("alias", "samples"))
                   and "stderr" not in k}
            for task, metrics in out["results"].items()}


def paper_row(results: dict[str, dict[str, float]]) -> list[tuple[str, Optional[float]]]:
    """The paper's Table 1 columns present in ``results``: ``(title, value)``."""
    return [(title, results[task][metric]) for task, metric, title in PAPER_COLUMNS
            if task in results and metric in results[task]]
