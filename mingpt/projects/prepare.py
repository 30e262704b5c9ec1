"""Turn text files into token files for training: `mingpt prepare`.

    mingpt prepare --data.input=shakespeare --data.out_dir=out/shakespeare-gpt2
    mingpt prepare --data.input=a.txt,b.txt --tokenizer.kind=bpe --tokenizer.vocab_size=4096

writes train.bin and val.bin (token ids), meta.json and the tokenizer into out_dir; `mingpt train
--data.dir=out_dir` trains on them. Files are streamed, so a corpus larger than memory works.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from mingpt.bpe import BPETokenizer, train_bpe
from mingpt.data import CharTokenizer, corpus_path, prepare_corpus, read_pieces
from mingpt.distributed import run_together
from mingpt.utils import CfgNode, setup_logging

log = logging.getLogger(__name__)


def get_config() -> CfgNode:
    return CfgNode(
        # input: comma-separated text files, 'shakespeare', or '' (the built-in corpus)
        data=CfgNode(input="", out_dir="out/data", val_fraction=0.1),
        # kind: 'gpt2' (OpenAI's BPE), 'bpe' (trained here on the input), or 'char'
        tokenizer=CfgNode(kind="gpt2", vocab_size=4096),
    )


def make_tokenizer(config: CfgNode, inputs: list[Path]):
    """GPT-2's tokenizer, or one learnt from the input files (streamed)."""
    kind = config.kind
    if kind == "gpt2":
        return BPETokenizer()
    if kind == "bpe":
        pieces = (piece for path in inputs for piece in read_pieces(path))
        return train_bpe(pieces, config.vocab_size, name=f"bpe-{config.vocab_size}")
    if kind == "char":
        chars: set[str] = set()
        for path in inputs:
            for piece in read_pieces(path):
                chars.update(piece)
        return CharTokenizer(sorted(chars))
    raise ValueError(f"tokenizer.kind={kind!r} must be 'gpt2', 'bpe' or 'char'")


def main(config: CfgNode) -> dict:
    setup_logging()
    names = config.data.input.split(",") if config.data.input else [""]
    inputs = [corpus_path(name.strip()) for name in names]
    if not 0.0 < config.data.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={config.data.val_fraction} must be between 0 and 1")
    # under torchrun (e.g. `mingpt words`) one process writes the files and the others wait
    meta = run_together(lambda: prepare_corpus(inputs, Path(config.data.out_dir),
                                               make_tokenizer(config.tokenizer, inputs),
                                               config.data.val_fraction), main_only=True)
    if meta is None:  # (a rank that only waited for rank 0)
        return {}
    log.info(f"prepared {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
             f"({meta['dtype']}, vocabulary of {meta['vocab_size']:,}) in {config.data.out_dir}")
    return meta


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("prepare", sys.argv[1:]))
