"""Turn text files into token files for training: `mingpt prepare`.

    mingpt prepare --data.input=shakespeare --data.out_dir=out/shakespeare-gpt2
    mingpt prepare --data.input=a.txt,b.txt --tokenizer.kind=bpe --tokenizer.vocab_size=4096
    mingpt prepare --data.input=hf:HuggingFaceFW/fineweb-edu --data.subset=sample-10BT --data.out_dir=out/edu10b

writes train.bin and val.bin (token ids), meta.json and the tokenizer into out_dir; `mingpt train
--data.dir=out_dir` trains on them. Files are streamed, so a corpus larger than memory works. A
Hugging Face dataset (hf:NAME, or hf:FOLDER of a local copy) streams into shards of
data.shard_tokens tokens instead, the first of them the validation split (mingpt/data/shards.py); run
the same command again to resume one stopped half-way.
"""
from __future__ import annotations

import sys

from mingpt.data import tokenizers
from mingpt.data.shards import is_hf_input
from mingpt.jobs.pipeline import prepare_data, prepare_hf_data
from mingpt.training import runtime
from mingpt.utils import CfgNode, Setting, setup_logging


def get_config() -> CfgNode:
    return CfgNode(
        # input: comma-separated text files, 'shakespeare', '' (the built-in corpus), or hf:NAME: a
        # Hugging Face dataset (the hub, or a local folder / file of one) streamed into token shards
        # of shard_tokens, the first one validation (val_fraction is for text files), tokenized
        # by `processes` processes (None: one per core); subset, split, text_key pick its documents
        data=CfgNode(input="", out_dir="out/data", val_fraction=Setting(0.1, above=0, below=1), subset="",
                     split="train", text_key="text", shard_tokens=Setting(100_000_000, min=1),
                     processes=Setting(None, kind=int, min=1)),
        # kind: 'gpt2' (OpenAI's BPE), 'bpe' (trained here on the input), or 'char'
        tokenizer=CfgNode(kind=Setting("gpt2", choices=tuple(tokenizers.KINDS)), vocab_size=Setting(4096, min=1)),
    )


def main(config: CfgNode) -> dict:
    setup_logging()
    runtime.setup(device="cpu")  # (joins a torchrun job, so that one process writes the files)
    d = config.data
    if is_hf_input(d.input):
        return prepare_hf_data(d, config.tokenizer)
    return prepare_data(d.input, d.out_dir, d.val_fraction, config.tokenizer)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("prepare", sys.argv[1:]))
