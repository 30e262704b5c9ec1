"""Sample text from a trained run, streaming it as it is generated.

    mingpt sample --system.work_dir=out/chargpt --prompt="ROMEO:" --max_new_tokens=300

The model comes from the run's newest intact checkpoint (or --system.checkpoint=best, iter_N...)
and the tokenizer from its tokenizer.json.
"""
from __future__ import annotations

import codecs
import sys
from pathlib import Path

import torch

from mingpt import runtime, tokenizers
from mingpt.model import GPT
from mingpt.utils import CfgNode, setup_logging


def get_config() -> CfgNode:
    return CfgNode(
        system=CfgNode(work_dir="out/chargpt", seed=3407, device="auto", checkpoint=None),
        prompt="",  # '' starts a new document: <|endoftext|> or a newline
        max_new_tokens=500,
        do_sample=True,  # False: greedy
        temperature=1.0,
        top_k=None,
        top_p=None,
    )


def main(config: CfgNode) -> str:
    setup_logging()
    device = runtime.setup(config.system.device, seed=config.system.seed).device
    work_dir = Path(config.system.work_dir)
    tokenizer = tokenizers.load(work_dir)
    model = GPT.from_pretrained(work_dir, device=device, checkpoint=config.system.checkpoint).eval()
    ids = tokenizers.start_ids(tokenizer, config.prompt)
    if len(ids) > model.block_size:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context of "
                         f"{model.block_size}; shorten it")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    sys.stdout.write(config.prompt)
    # BPE tokens can end inside a multi-byte character: decode the byte stream incrementally
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = [config.prompt]
    for token in model.generate_stream(idx, config.max_new_tokens, temperature=config.temperature,
                                       do_sample=config.do_sample, top_k=config.top_k,
                                       top_p=config.top_p):
        ids = token[0].tolist()
        piece = utf8.decode(tokenizer.decode_bytes(ids)) if hasattr(tokenizer, "decode_bytes") else tokenizer.decode(ids)
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    pieces.append(utf8.decode(b"", final=True))  # a character left incomplete at the end
    sys.stdout.write(pieces[-1] + "\n")
    return "".join(pieces)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("sample", sys.argv[1:]))
