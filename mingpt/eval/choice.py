"""Tasks scored by log-likelihood as lm-evaluation-harness scores them: continuations, multiple
choice (HellaSwag), so that the scores compare with the harness's published figures.

Scoring works on token ids, so this module knows no tokenizer and no GPT: a caller hands over
`encode` (text -> ids) and any model whose forward(idx) returns (logits, ...). The harness's rules,
followed here exactly:
- a (context, continuation) pair is encoded as a whole and split after the context's tokens, with
  the context's trailing spaces moved to the continuation; an empty context is the prefix token
  (<|endoftext|>); a pair longer than the model's context keeps its last block_size + 1 tokens;
- the continuation's log-likelihood is the sum of its tokens' log-probabilities;
- multiple choice: acc takes the choice of highest log-likelihood, acc_norm the highest
  log-likelihood per character of the choice (len(choice) of the text without the leading space:
  the harness's `completion_len`; its byte-normalised score is another metric, acc_bytes).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm



# -- log-likelihood of continuations, as lm-evaluation-harness computes it ---------------------------
Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                prefix_id: int | None) -> Request:
    """The ids of a (context, continuation) pair, split as the harness splits them: encoding the
    whole text and then the context keeps the tokenizer's merges across the seam exactly as in
    the whole (" world" stays one token in "Hello world"). An empty context is [prefix_id]."""
    if context == "":
        ids = encode(continuation)
        if prefix_id is None:
            raise ValueError("an empty context needs a token that starts a document, and this "
                             "tokenizer has none; give every request a context")
        return ([prefix_id], ids) if ids[:1] != [prefix_id] else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, context_ids = encode(context + continuation), encode(context)
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods(model: nn.Module, requests: Sequence[Request], block_size: int, batch_size: int,
                   device: torch.device, autocast: Callable[[], AbstractContextManager] = nullcontext,
                   progress: bool = False, desc: str = "scoring") -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each request's continuation given its context: the sum of
    log p(token) over the continuation's tokens, and whether greedy decoding would have produced
    them all. Requests go in batches of similar length (longest first), padded on the right,
    which a causal model never sees; the results come back in the requests' order."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
    was_training = model.training
    model.eval()
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=desc, disable=not progress, mininterval=1.0, dynamic_ncols=True):
        chunk = order[start:start + batch_size]
        rows, continuations = [], []
        for i in chunk:
            context, continuation = requests[i]
            if not 0 < len(continuation) <= block_size:
                raise ValueError(f"a continuation of {len(continuation)} tokens cannot be scored by a "
                                 f"model with a context of {block_size} tokens")
            rows.append((context + continuation)[-(block_size + 1):][:-1])  # the last position predicts nothing
            continuations.append(continuation)
        x = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for j, row in enumerate(rows):
            x[j, :len(row)] = torch.tensor(row)
        with autocast():
            logits = model(x.to(device))[0]
        for j, (row, continuation) in enumerate(zip(rows, continuations)):
            end = len(row)  # (only the continuation's positions need the softmax over the vocabulary)
            own = torch.log_softmax(logits[j, end - len(continuation):end].float(), dim=-1)  # (len, vocab)
            target = torch.tensor(continuation, device=own.device)
            greedy = bool((own.argmax(dim=-1) == target).all())
            results[chunk[j]] = (float(own.gather(1, target[:, None]).sum()), greedy)
    model.train(was_training)
    return results


# -- multiple choice ---------------------------------------------------------------------------------
def choice_requests(questions: Sequence[Any], encode: Callable[[str], list[int]],
                    prefix_id: int | None) -> list[Request]:
    """Every choice of every question (anything with .query and .choices, e.g. a
    hellaswag.Question) as the request to score " " + choice after the query."""
    return [encode_pair(encode, q.query, " " + choice, prefix_id) for q in questions for choice in q.choices]


def score_choices(questions: Sequence[Any], scored: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """acc, acc_norm and n from the (log-likelihood, is_greedy) of every choice, in order. Ties
    go to the first choice, as numpy's argmax (the harness's) gives them."""
    acc = acc_norm = 0
    at = 0
    for q in questions:
        lls = [ll for ll, _ in scored[at:at + len(q.choices)]]
        at += len(q.choices)
        per_char = [ll / float(len(choice)) for ll, choice in zip(lls, q.choices)]
        acc += max(range(len(lls)), key=lls.__getitem__) == q.gold
        acc_norm += max(range(len(per_char)), key=per_char.__getitem__) == q.gold
    n = len(questions)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": n}


class MultipleChoiceTask:
    """Questions encoded once, scored on any model when called: the trainer's eval_task.

        task = MultipleChoiceTask(hellaswag.load(), tokenizer.encode, tokenizer.eot_token, block_size=1024)
        task(model, device)  # {"acc": 0.29, "acc_norm": 0.31, "n": 10042}
    """

    def __init__(self, questions: Sequence[Any], encode: Callable[[str], list[int]], prefix_id: int | None,
                 block_size: int, batch_size: int = 16, progress: bool = False, name: str = "hellaswag") -> None:
        self.questions = list(questions)
        self.requests = choice_requests(self.questions, encode, prefix_id)
        self.block_size, self.batch_size, self.progress, self.name = block_size, batch_size, progress, name

    def __call__(self, model: nn.Module, device: torch.device,
                 autocast: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
        scored = loglikelihoods(model, self.requests, self.block_size, self.batch_size, device, autocast,
                                self.progress, desc=self.name)
        return score_choices(self.questions, scored)
