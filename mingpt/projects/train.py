"""Train (or fine-tune) a GPT on a folder made by `mingpt prepare`: `mingpt train`.

    mingpt train --data.dir=out/data                          # a new model, any tokenizer
    mingpt train --data.dir=out/data --init_from=gpt2         # fine-tune OpenAI's GPT-2 (download)
    mingpt train --data.dir=out/data --init_from=out/train    # continue from a mingpt run
    mingpt sample --system.work_dir=out/train --prompt="To be"

The run folder gets the data's tokenizer, so `mingpt sample` decodes with it.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from mingpt.data import TokenStream, load_tokenizer
from mingpt.model import GPT
from mingpt.sample import prompt_ids
from mingpt.trainer import Trainer
from mingpt.utils import CfgNode, set_seed, setup_logging

log = logging.getLogger(__name__)


def get_config() -> CfgNode:
    C = CfgNode()
    C.system = CfgNode(seed=3407, work_dir="out/train", resume=False, overwrite=False)
    C.data = CfgNode(dir="out/data")
    # a pretrained model to start from: 'gpt2' ... 'gpt2-xl', a Hugging Face GPT-2 folder, or a
    # mingpt run folder; '' trains a new model of the shape in `model`
    C.init_from = ""
    C.model = GPT.get_default_config()
    C.model.model_type = "gpt-mini"
    C.model.block_size = 128
    C.trainer = Trainer.get_default_config()
    C.trainer.max_iters = 2000
    C.trainer.batch_size = 16
    C.trainer.learning_rate = 1e-3
    C.trainer.warmup_iters = 100
    C.trainer.betas = (0.9, 0.99)
    C.sample = CfgNode(prompt="", max_new_tokens=200, temperature=1.0, top_k=50)
    return C


def load_meta(data_dir: Path) -> dict:
    meta_file = data_dir / "meta.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{str(data_dir)!r} holds no meta.json; make it first with "
                                f"`mingpt prepare --data.out_dir={data_dir}`")
    return json.loads(meta_file.read_text())


def check_same_tokenizer(init_from: str, data_dir: Path) -> None:
    """A pretrained model only understands the ids of its own tokenizer: refuse other data."""
    data_spec = json.loads((data_dir / "tokenizer.json").read_text())
    own = Path(init_from) / "tokenizer.json"
    if own.exists():  # a mingpt run folder knows its tokenizer
        same = json.loads(own.read_text()) == data_spec
        expected = f"the tokenizer of {init_from}"
    else:  # OpenAI's GPT-2, or a Hugging Face GPT-2 folder
        same = data_spec.get("type") == "bpe" and data_spec.get("name") == "gpt2"
        expected = "GPT-2's tokenizer (mingpt prepare --tokenizer.kind=gpt2)"
    if not same:
        raise ValueError(f"the data in {str(data_dir)!r} was tokenized differently from "
                         f"{init_from!r}; prepare it with {expected}")


def build_model(config: CfgNode, vocab_size: int) -> GPT:
    """A new GPT for this vocabulary, or a pretrained one (its own dropout; block_size cropped
    when config.model.block_size is smaller)."""
    if not config.init_from:
        config.model.vocab_size = vocab_size
        return GPT(config.model)
    check_same_tokenizer(config.init_from, Path(config.data.dir))
    model = GPT.from_pretrained(config.init_from)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"the data's tokenizer has {vocab_size} tokens but {config.init_from!r} "
                         f"knows only {model.config.vocab_size}; prepare the data with its tokenizer")
    if config.model.block_size > model.config.block_size:
        raise ValueError(f"model.block_size={config.model.block_size} is larger than the "
                         f"{model.config.block_size} positions {config.init_from!r} was trained with; "
                         f"use at most {model.config.block_size}")
    if config.model.block_size < model.config.block_size:
        model.crop_block_size(config.model.block_size)
    config.model.merge_from_dict(model.config.to_dict())  # record what was really trained
    return model


def main(config: CfgNode) -> dict:
    setup_logging()
    set_seed(config.system.seed)
    data_dir = Path(config.data.dir)
    meta = load_meta(data_dir)
    tokenizer = load_tokenizer(data_dir)
    model = build_model(config, tokenizer.vocab_size)
    block_size = model.config.block_size
    train = TokenStream.from_bin(data_dir / "train.bin", meta["dtype"], block_size)
    val = TokenStream.from_bin(data_dir / "val.bin", meta["dtype"], block_size)
    log.info(f"train: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens; "
             f"model with {model.num_params():,} parameters"
             + (f", from {config.init_from}" if config.init_from else ""))
    return train_and_sample(config, model, tokenizer, train, val)


def train_and_sample(config: CfgNode, model: GPT, tokenizer, train: TokenStream, val: TokenStream) -> dict:
    """Train model into the run folder config.system.work_dir (which also keeps the tokenizer, for
    `mingpt sample`), then print a sample of config.sample.max_new_tokens tokens."""
    work_dir = Path(config.system.work_dir)
    trainer = Trainer(config.trainer, model, train, val, work_dir=work_dir, run_config=config.to_dict(),
                      resume=config.system.resume, overwrite=config.system.overwrite)
    if trainer.is_main:
        tokenizer.save(work_dir)
    summary = trainer.run()
    log.info(f"best val loss {summary['val_loss']:.4f} after {summary['iters']} iterations in "
             f"{summary['wall_s']:.1f} s ({summary['ms_per_iter']:.1f} ms/iter); run folder: {work_dir}")
    s = config.sample
    if s.max_new_tokens > 0:
        model.eval()
        idx = torch.tensor([prompt_ids(tokenizer, s.prompt)], dtype=torch.long, device=trainer.device)
        # (under FSDP every rank must take part in generating; one prints)
        out = model.generate(idx, s.max_new_tokens, temperature=s.temperature, do_sample=True, top_k=s.top_k)
        if trainer.is_main:
            print(tokenizer.decode(out[0].tolist()))
    return summary


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("train", sys.argv[1:]))
