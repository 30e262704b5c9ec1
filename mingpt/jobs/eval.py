"""Score a model on a task: `mingpt eval`.

    mingpt eval --model=gpt2 --task=hellaswag                   # downloads the validation set once
    mingpt eval --model=out/train --task=hellaswag --out=scores.json
    mingpt eval --model=out/hf --task=hellaswag --data.path=my_items.jsonl --data.limit=500
    mingpt eval --model=out/train --task=val_loss --data.dir=out/data

--model takes what `mingpt sample --model=` takes: a mingpt run folder (with its tokenizer), a
Hugging Face folder or a hub name (with its family's tokenizer). HellaSwag is scored as
lm-evaluation-harness scores it (mingpt/eval/choice.py says how), so the figures compare with published
ones: OpenAI's GPT-2 124M has acc 0.289, acc_norm 0.311 in the harness. val_loss is the mean loss
on a `mingpt prepare` folder's val.bin, whose tokenizer must be the model's. Prints the scores;
--out=FILE also writes them as JSON.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from mingpt.data import load_prepared, tokenizers
from mingpt.eval import hellaswag, loss as eval_loss
from mingpt.formats import pretrained
from mingpt.jobs.pipeline import check_same_tokenizer, encoded_task, system_config
from mingpt.model import GPT
from mingpt.training import runtime
from mingpt.utils import CfgNode, Setting, setup_logging, write_json

log = logging.getLogger(__name__)
TASKS = ("hellaswag", "val_loss")


def get_config() -> CfgNode:
    return CfgNode(
        # device 'auto': cuda, mps, then cpu; dtype 'fp32' as the harness (a model's own
        # precision), or 'bf16' / 'fp16' autocast; checkpoint: of a run folder (None: the newest)
        system=system_config(None, trains=False, device="auto", dtype=Setting("fp32", choices=tuple(runtime.DTYPES))),
        model="",  # a mingpt run folder, a Hugging Face folder or a hub name (gpt2, ...)
        task=Setting("hellaswag", choices=TASKS),
        # path: a local HellaSwag jsonl ('': the validation set, downloaded once); dir: the
        # `mingpt prepare` folder of val_loss; limit: the first N items (hellaswag) or batches (val_loss)
        data=CfgNode(path="", dir="", limit=Setting(None, kind=int, min=1)),
        batch_size=Setting(16, min=1),
        out="",  # a JSON file for the scores ('': print only)
        progress_bar=True,
    ).also_check(_what_the_task_needs)


def _what_the_task_needs(config: CfgNode, prefix: str) -> list[str]:
    """A model to score, and for val_loss the prepared data to score it on."""
    problems = []
    if not config.model:
        problems.append("--model is not given; pass a mingpt run folder, a Hugging Face folder or a hub name")
    if config.task == "val_loss" and not config.data.dir:
        problems.append("task='val_loss' needs --data.dir=FOLDER, a folder made by `mingpt prepare`")
    return problems


def main(config: CfgNode) -> dict:
    setup_logging()
    config.check()
    chosen = runtime.setup(config.system.device, config.system.dtype, seed=config.system.seed)
    model, tokenizer = pretrained.load_with_tokenizer(GPT, config.model, chosen.device, config.system.checkpoint)

    def autocast():
        return torch.autocast(chosen.device.type, dtype=chosen.amp_dtype, enabled=chosen.amp_dtype is not None)

    if config.task == "hellaswag":
        scores = hellaswag_scores(config, model, tokenizer, chosen.device, autocast)
        line = f"hellaswag: acc {scores['acc']:.4f}  acc_norm {scores['acc_norm']:.4f}  n {scores['n']}"
    else:
        scores = val_loss_scores(config, model, chosen.device, autocast)
        line = f"val_loss: {scores['val_loss']:.4f}  batches {scores['batches']}"
    result = {"task": config.task, "model": config.model, **scores}
    print(line)
    if config.out:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
        log.info(f"wrote the scores to {out}")
    return result


def hellaswag_scores(config: CfgNode, model: GPT, tokenizer: tokenizers.Tokenizer, device: torch.device,
                     autocast) -> dict:
    questions = hellaswag.load(config.data.path or None, config.data.limit)
    task = encoded_task(questions, tokenizer, model.block_size, config.batch_size, progress=config.progress_bar,
                        whose=f"the model {config.model!r}: its")
    log.info(f"hellaswag: {len(questions)} items, {len(task.requests)} endings to score")
    return {**task(model, device, autocast), "data": config.data.path or hellaswag.VAL_URL}


def val_loss_scores(config: CfgNode, model: GPT, device: torch.device, autocast) -> dict:
    data_dir = Path(config.data.dir)
    check_same_tokenizer(config.model, data_dir)  # (a run folder: the same tokenizer.json)
    _, val, meta = load_prepared(data_dir, model.block_size)
    if meta["vocab_size"] > model.config.vocab_size:
        raise ValueError(f"the data in {str(data_dir)!r} has {meta['vocab_size']} token ids but the model "
                         f"knows only {model.config.vocab_size}; prepare it with the model's tokenizer")
    batches = len(val) // model.block_size
    batches = -(-max(batches, 1) // config.batch_size)
    if config.data.limit is not None:
        batches = min(batches, config.data.limit)
    loss = eval_loss.val_loss(model, val, config.batch_size, batches, device, autocast)
    return {"val_loss": loss, "batches": batches, "data": str(data_dir)}


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("eval", sys.argv[1:]))
