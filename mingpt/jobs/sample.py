"""Sample text from a trained run or a pretrained model, streaming it as it is generated.

    mingpt sample --system.work_dir=out/chargpt --prompt="ROMEO:" --max_new_tokens=300
    mingpt sample --model=gpt2 --prompt="The meaning of life is"
    mingpt sample --model=EleutherAI/gpt-neo-125m --prompt="In a shocking finding,"
    mingpt sample --model=openai-gpt --prompt="the old man said"

--model takes a hub name (gpt2 ... gpt2-xl, openai-gpt, EleutherAI/gpt-neo-125m / 1.3B / 2.7B:
downloaded into the Hugging Face cache), a Hugging Face folder or a mingpt run folder; without it,
the run in --system.work_dir. A run brings its newest intact checkpoint (or
--system.checkpoint=best, iter_N...) and its tokenizer.json; a pretrained model its own tokenizer
(GPT-2's BPE for GPT-2 and GPT-Neo; GPT-1's, through transformers, from its vocab.json and
merges.txt).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from mingpt import runtime, tokenizers
from mingpt.model import GPT
from mingpt.run_folder import RunFolder
from mingpt.utils import CfgNode, setup_logging


def get_config() -> CfgNode:
    return CfgNode(
        system=CfgNode(work_dir="out/chargpt", seed=3407, device="auto", checkpoint=None),
        model="",  # a hub name, Hugging Face folder or run folder; '' : system.work_dir
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
    source = config.model or config.system.work_dir
    # a run's tokenizer is its tokenizer.json (a run's config.json is no Hugging Face config)
    run = RunFolder(Path(source))
    tokenizer = tokenizers.load(source) if run.holds_checkpoint() else tokenizers.for_pretrained(source)
    model = GPT.from_pretrained(source, device=device, checkpoint=config.system.checkpoint).eval()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer found for {source!r} has {tokenizer.vocab_size} tokens but "
                         f"the model knows only {model.config.vocab_size}: it was trained with another "
                         f"tokenizer; sample from the mingpt run folder it came from instead")
    ids = tokenizers.start_ids(tokenizer, config.prompt)
    if len(ids) > model.block_size:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context of "
                         f"{model.block_size}; shorten it")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    sys.stdout.write(config.prompt)
    stream = tokenizers.TextStream(tokenizer, ids)
    pieces = [config.prompt]
    for token in model.generate_stream(idx, config.max_new_tokens, temperature=config.temperature,
                                       do_sample=config.do_sample, top_k=config.top_k,
                                       top_p=config.top_p):
        pieces.append(stream.add(token[0].tolist()))
        sys.stdout.write(pieces[-1])
        sys.stdout.flush()
    pieces.append(stream.end())
    sys.stdout.write(pieces[-1] + "\n")
    return "".join(pieces)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("sample", sys.argv[1:]))
