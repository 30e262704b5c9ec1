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

from mingpt.projects import prepare, train
from mingpt.utils import CfgNode


def get_config() -> CfgNode:
    C = train.get_config()
    C.system.work_dir = "out/words"
    C.data = CfgNode(input="", val_fraction=0.1)
    C.tokenizer = prepare.get_config().tokenizer
    C.tokenizer.kind, C.tokenizer.vocab_size = "bpe", 2048
    C.model.model_type = "gpt-micro"
    C.model.block_size = 64
    C.model.embd_pdrop = C.model.resid_pdrop = C.model.attn_pdrop = 0.0
    C.trainer.batch_size = 12
    C.trainer.max_iters = 1500
    return C


def main(config: CfgNode) -> dict:
    data_dir = Path(config.system.work_dir) / "data"
    prep = prepare.get_config()
    prep.data.merge_from_dict({"input": config.data.input, "out_dir": str(data_dir),
                               "val_fraction": config.data.val_fraction})
    prep.tokenizer.merge_from_dict(config.tokenizer.to_dict())
    prepare.main(prep)
    run = train.get_config()
    run.merge_from_dict({k: v for k, v in config.to_dict().items() if k in ("system", "init_from", "model", "trainer", "sample")})
    run.data.dir = str(data_dir)
    return train.main(run)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("words", sys.argv[1:]))
