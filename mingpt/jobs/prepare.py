"""Turn text files into token files for training: `mingpt prepare`.

    mingpt prepare --data.input=shakespeare --data.out_dir=out/shakespeare-gpt2
    mingpt prepare --data.input=a.txt,b.txt --tokenizer.kind=bpe --tokenizer.vocab_size=4096

writes train.bin and val.bin (token ids), meta.json and the tokenizer into out_dir; `mingpt train
--data.dir=out_dir` trains on them. Files are streamed, so a corpus larger than memory works.
"""
from __future__ import annotations

import sys

from mingpt import runtime
from mingpt.pipeline import prepare_data
from mingpt.utils import CfgNode, setup_logging


def get_config() -> CfgNode:
    return CfgNode(
        # input: comma-separated text files, 'shakespeare', or '' (the built-in corpus)
        data=CfgNode(input="", out_dir="out/data", val_fraction=0.1),
        # kind: 'gpt2' (OpenAI's BPE), 'bpe' (trained here on the input), or 'char'
        tokenizer=CfgNode(kind="gpt2", vocab_size=4096),
    )


def main(config: CfgNode) -> dict:
    setup_logging()
    runtime.setup(device="cpu")  # (joins a torchrun job, so that one process writes the files)
    d = config.data
    return prepare_data(d.input, d.out_dir, d.val_fraction, config.tokenizer)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("prepare", sys.argv[1:]))
