"""Sample text from a trained run, streaming it as it is generated.

    mingpt sample --system.work_dir=out/chargpt --prompt="ROMEO:" --max_new_tokens=300

The model comes from the run's latest checkpoint and the tokenizer from its tokenizer.json.
"""
from __future__ import annotations

import codecs
import sys
from pathlib import Path

import torch

from mingpt.data import CharTokenizer, load_tokenizer
from mingpt.model import GPT
from mingpt.trainer import resolve_device
from mingpt.utils import CfgNode, set_seed, setup_logging


def get_config() -> CfgNode:
    return CfgNode(
        system=CfgNode(work_dir="out/chargpt", seed=3407, device="auto"),
        prompt="",  # '' starts a new document: <|endoftext|> or a newline
        max_new_tokens=500,
        do_sample=True,  # False: greedy
        temperature=1.0,
        top_k=None,
        top_p=None,
    )


def main(config: CfgNode) -> str:
    setup_logging()
    set_seed(config.system.seed)
    work_dir = Path(config.system.work_dir)
    tokenizer = load_tokenizer(work_dir)
    device = resolve_device(config.system.device)
    model = GPT.from_pretrained(work_dir, device=device).eval()
    ids = prompt_ids(tokenizer, config.prompt)
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


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts a new document (<|endoftext|>, or a newline)."""
    if prompt:
        return tokenizer.encode(prompt)
    if getattr(tokenizer, "eot_token", None) is not None:
        return [tokenizer.eot_token]
    if isinstance(tokenizer, CharTokenizer) and "\n" not in tokenizer.stoi:
        return [0]
    return tokenizer.encode("\n")


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("sample", sys.argv[1:]))
