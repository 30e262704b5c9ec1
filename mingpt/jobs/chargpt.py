"""A character-level language model on any text: each character is one token.

    mingpt chargpt                                   # the built-in corpus (pydoc's topics), offline
    mingpt chargpt --data.input=shakespeare          # Tiny Shakespeare, downloaded once
    mingpt chargpt --data.input=notes.txt --model.n_layer=6

The text is split 90/10 into training and validation streams; the run folder keeps the best
checkpoint by validation loss and the character vocabulary (tokenizer.json), and the run ends by
sampling from the model.
"""
from __future__ import annotations

import logging
import sys

import torch

from mingpt.data import TokenStream, check_val_fraction, load_corpus
from mingpt.data.char import CharTokenizer
from mingpt.distributed import diloco
from mingpt.jobs.pipeline import sample_config, system_config, train_and_sample
from mingpt.model import GPT
from mingpt.model import describe_presets as help_notes  # noqa: F401  (for --help)
from mingpt.trainer import Trainer
from mingpt.training import runtime
from mingpt.utils import CfgNode, Setting, setup_logging

log = logging.getLogger(__name__)


def get_config() -> CfgNode:
    C = CfgNode()
    C.system = system_config("out/chargpt")
    C.recipe = None  # set by --recipe=NAME (jobs/recipes.py; --help lists them), recorded in config.json
    # input: a file, 'shakespeare', or '' (built-in); the last val_fraction of it is for validation
    C.data = CfgNode(input="", val_fraction=Setting(0.1, above=0, below=1))
    C.model = GPT.get_default_config()
    C.model.model_type = "gpt-micro"  # 4 layers, 4 heads, 128 dims
    C.model.block_size = 64
    C.model.embd_pdrop = C.model.resid_pdrop = C.model.attn_pdrop = 0.0
    C.model.tie_embeddings = True  # as GPT-2 (minGPT's default is untied)
    C.trainer = Trainer.get_default_config()
    C.trainer.learning_rate = 1e-3
    C.trainer.batch_size = 12
    C.trainer.max_iters = 2000
    C.trainer.warmup_iters = 100
    C.trainer.lr_schedule = "cosine"  # (minGPT's default is a constant rate)
    C.trainer.betas = (0.9, 0.99)  # small batches give noisy gradients: average them longer
    C.trainer.weight_decay = 0.0  # at 2000 iterations the model underfits; decay only slows it
    C.trainer.min_lr_ratio = 0.3  # cosine to 3e-4, not 1e-4: measured 0.01 lower val loss
    C.trainer.eval_iters = None  # validate on the whole validation split
    C.sample = sample_config(max_new_tokens=500, top_k=None)
    C.diloco = diloco.get_default_config()  # off (sync_every=0); one worker of many with it (distributed/diloco/)
    return C


def split_streams(text: str, tokenizer: CharTokenizer, block_size: int, val_fraction: float
                  ) -> tuple[TokenStream, TokenStream]:
    """Encode text and cut it into a training stream (the first 90%) and a validation stream."""
    check_val_fraction(val_fraction)
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_train = int(len(tokens) * (1 - val_fraction))
    return TokenStream(tokens[:n_train], block_size), TokenStream(tokens[n_train:], block_size)


def main(config: CfgNode) -> dict:
    setup_logging()
    runtime.setup(config.trainer.device, config.trainer.dtype, seed=config.system.seed)
    text = load_corpus(config.data.input)
    tokenizer = CharTokenizer.from_text(text)
    config.model.vocab_size = tokenizer.vocab_size
    train, val = split_streams(text, tokenizer, config.model.block_size, config.data.val_fraction)
    model = GPT(config.model)
    log.info(f"chargpt: {len(text):,} characters, vocabulary of {tokenizer.vocab_size}, "
             f"{len(train.tokens):,} train / {len(val.tokens):,} val tokens; "
             f"model with {model.num_params():,} parameters")
    return train_and_sample(config, model, tokenizer, train, val)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("chargpt", sys.argv[1:]))
