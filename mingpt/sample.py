"""Sample text from a trained run, streaming it as it is generated.

    mingpt sample --system.work_dir=out/chargpt --prompt="ROMEO:" --max_new_tokens=300

The model comes from the run's latest checkpoint and the tokenizer from its tokenizer.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from mingpt.data import CharTokenizer
from mingpt.model import GPT
from mingpt.trainer import resolve_device
from mingpt.utils import CfgNode, set_seed, setup_logging


def get_config() -> CfgNode:
    return CfgNode(
        system=CfgNode(work_dir="out/chargpt", seed=3407, device="auto"),
        prompt="",  # '' starts from a newline (or the first token of the vocabulary)
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
    tokenizer_file = work_dir / "tokenizer.json"
    if not tokenizer_file.exists():
        raise FileNotFoundError(f"{str(work_dir)!r} has no tokenizer.json; pass the "
                                f"--system.work_dir of a chargpt run")
    tokenizer = CharTokenizer.load(tokenizer_file)
    device = resolve_device(config.system.device)
    model = GPT.from_pretrained(work_dir, device=device).eval()
    prompt = config.prompt or ("\n" if "\n" in tokenizer.stoi else tokenizer.chars[0])
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    sys.stdout.write(prompt)
    pieces = [prompt]
    for token in model.generate_stream(idx, config.max_new_tokens, temperature=config.temperature,
                                       do_sample=config.do_sample, top_k=config.top_k,
                                       top_p=config.top_p):
        piece = tokenizer.decode(token[0])
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(pieces)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("sample", sys.argv[1:]))
