"""The bridge to lm-evaluation-harness: MinGPTLM puts a mingpt model behind the harness's `LM`
interface, so that any of its tasks (arc_easy, lambada_openai, wikitext, ...) runs on it.

    import lm_eval
    from mingpt.eval.lm_eval import MinGPTLM       # (also importable as mingpt.lm_eval_bridge)
    lm = MinGPTLM("out/train")           # a run folder, a Hugging Face folder or a hub name
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])["results"]

Importing this module also registers it with the harness as "mingpt", so
`simple_evaluate(model="mingpt", model_args="pretrained=out/train", ...)` works too. The
scoring is choice.py's, which follows the harness's own rules; needs `pip install "mingpt[eval]"`.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import torch
import torch.nn as nn

from mingpt.eval import choice
from mingpt.formats import pretrained as formats
from mingpt.model import GPT

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    raise ImportError("the lm-eval bridge needs lm-evaluation-harness: "
                      "pip install \"mingpt[eval]\" (or pip install lm_eval)") from None

log = logging.getLogger(__name__)


@register_model("mingpt")
class MinGPTLM(LM):
    """A mingpt model as the harness's LM: log-likelihoods of continuations (multiple choice),
    of whole texts in windows of the model's context (perplexity), and greedy generation.

    pretrained: a model (then tokenizer must be given: anything with encode and decode, and
    eot_token for empty contexts) or what `mingpt eval --model=` takes."""

    def __init__(self, pretrained: str | nn.Module, tokenizer: Any = None, device: str = "cpu",
                 batch_size: int | str = 16, max_gen_toks: int = 256, checkpoint: str | None = None,
                 autocast: Callable[[], AbstractContextManager] = nullcontext, **harness_settings: Any) -> None:
        super().__init__()
        if harness_settings:  # what simple_evaluate hands every model (max_batch_size, ...)
            log.info(f"MinGPTLM ignores {', '.join(sorted(harness_settings))}")
        self._device = torch.device(device)  # (LM's `device` property reads it)
        if isinstance(pretrained, str):
            pretrained, tokenizer = formats.load_with_tokenizer(GPT, pretrained, self._device, checkpoint)
        if tokenizer is None:
            raise ValueError("MinGPTLM(model) needs the tokenizer whose ids the model reads: "
                             "MinGPTLM(model, tokenizer)")
        self.model = pretrained.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # ('auto': a fixed size)
        self.max_gen_toks = max_gen_toks
        self.autocast = autocast
        self.block_size = self.model.block_size
        self.prefix_id = getattr(tokenizer, "eot_token", None)

    def _score(self, pairs: list[choice.Request], disable_tqdm: bool) -> list[tuple[float, bool]]:
        return choice.loglikelihoods(self.model, pairs, self.block_size, self.batch_size, self.device,
                                       self.autocast, progress=not disable_tqdm, desc="mingpt loglikelihood")

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) for each request's (context, continuation)."""
        pairs = [choice.encode_pair(self.tokenizer.encode, context, continuation, self.prefix_id)
                 for context, continuation in (r.args for r in requests)]
        return self._score(pairs, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) of each request's whole text, from a start-of-document token, in windows
        of the model's context that each predict new tokens only (the harness's windows)."""
        if self.prefix_id is None:
            raise ValueError("scoring whole texts needs a token that starts a document, and this "
                             "tokenizer has none")
        windows, owners = [], []
        for i, (text,) in enumerate(r.args for r in requests):
            for window in get_rolling_token_windows(self.tokenizer.encode(text), self.prefix_id,
                                                    self.block_size, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (ll, _) in zip(owners, self._score(windows, disable_tqdm)):
            totals[owner] += ll
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or, with do_sample, sampled) continuations of each context, cut before the
        first of its `until` strings, at most max_gen_toks tokens."""
        outputs = []
        for context, settings in (r.args for r in requests):
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(settings.get("max_gen_toks", self.max_gen_toks))
            ids = self.tokenizer.encode(context) if context else [self.prefix_id]
            ids = ids[-max(self.block_size - 1, 1):]  # the most recent context, as the harness crops it
            idx = torch.tensor([ids], dtype=torch.long, device=self.device)
            new: list[int] = []
            text = ""
            with self.autocast():
                for token in self.model.generate_stream(idx, max_new, temperature=float(settings.get("temperature", 1.0) or 1.0),
                                                        do_sample=bool(settings.get("do_sample", False))):
                    token_id = int(token[0, 0])
                    if token_id == self.prefix_id:
                        break
                    new.append(token_id)
                    text = self.tokenizer.decode(new)
                    if any(stop in text for stop in until):
                        break
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs
