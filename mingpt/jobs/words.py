"""A word-level (BPE) GPT on any text, in one command: prepare the tokens, then train.

    mingpt words                                        # built-in corpus, a 2048-token BPE learnt on it
    mingpt words --data.input=shakespeare --tokenizer.kind=gpt2
    mingpt sample --system.work_dir=out/words --prompt="The"

The prepared tokens go to <work_dir>/data; `mingpt train --data.dir=<work_dir>/data` reuses them
(for instance to fine-tune GPT-2 with --init_from=gpt2 and --tokenizer.kind=gpt2).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mingpt.data import tokenizers
from mingpt.jobs.pipeline import prepare_data, train_config, train_on_prepared
from mingpt.model import describe_presets as help_notes  # noqa: F401  (for --help)
from mingpt.training import runtime
from mingpt.utils import CfgNode, Setting, setup_logging


def get_config() -> CfgNode:
    C = train_config()
    C.system.work_dir = "out/words"
    C.data = CfgNode(input="", val_fraction=Setting(0.1, above=0, below=1))
    C.tokenizer = CfgNode(kind=Setting("bpe", choices=tuple(tokenizers.KINDS)), vocab_size=Setting(2048, min=1))
    C.model.model_type = "gpt-micro"
    C.model.block_size = 64
    C.model.embd_pdrop = C.model.resid_pdrop = C.model.attn_pdrop = 0.0
    C.trainer.batch_size = 12
    C.trainer.max_iters = 1500
    return C


def main(config: CfgNode) -> dict:
    setup_logging()
    runtime.setup(config.trainer.device, config.trainer.dtype, seed=config.system.seed)
    data_dir = Path(config.system.work_dir) / "data"
    prepare_data(config.data.input, data_dir, config.data.val_fraction, config.tokenizer)
    run = train_config()
    run.merge_from_dict({k: v for k, v in config.to_dict().items()
                         if k in ("system", "recipe", "init_from", "model", "trainer", "sample", "task", "diloco")})
    run.data.dir = str(data_dir)
    return train_on_prepared(run)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("words", sys.argv[1:]))
