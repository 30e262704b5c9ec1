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

import torch

from mingpt.data import tokenizers
from mingpt.formats import pretrained
from mingpt.jobs.pipeline import system_config
from mingpt.model import GPT
from mingpt.training import runtime
from mingpt.utils import CfgNode, Setting, setup_logging


def get_config() -> CfgNode:
    return CfgNode(
        system=system_config("out/chargpt", trains=False, device="auto"),
        model="",  # a hub name, Hugging Face folder or run folder; '' : system.work_dir
        prompt="",  # '' starts a new document: <|endoftext|> or a newline
        max_new_tokens=Setting(500, min=0),
        do_sample=True,  # False: greedy
        temperature=Setting(1.0, min=0),  # 0: greedy
        top_k=Setting(None, kind=int, min=1),
        top_p=Setting(None, kind=float, above=0, max=1),
    )


def main(config: CfgNode) -> str:
    setup_logging()
    device = runtime.setup(config.system.device, seed=config.system.seed).device
    source = config.model or config.system.work_dir
    model, tokenizer = pretrained.load_with_tokenizer(GPT, source, device, config.system.checkpoint)
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
