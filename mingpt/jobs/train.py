"""Train (or fine-tune) a GPT on a folder made by `mingpt prepare`: `mingpt train`.

    mingpt train --data.dir=out/data                          # a new model, any tokenizer
    mingpt train --data.dir=out/data --init_from=gpt2         # fine-tune OpenAI's GPT-2 (download)
    mingpt train --data.dir=out/data --init_from=out/train    # continue from a mingpt run
    mingpt sample --system.work_dir=out/train --prompt="To be"

The run folder gets the data's tokenizer, so `mingpt sample` decodes with it.
"""
from __future__ import annotations

import sys

from mingpt.jobs.pipeline import train_config, train_on_prepared
from mingpt.model import describe_presets as help_notes  # noqa: F401  (for --help)
from mingpt.training import runtime
from mingpt.utils import CfgNode, setup_logging


def get_config() -> CfgNode:
    return train_config()


def main(config: CfgNode) -> dict:
    setup_logging()
    runtime.setup(config.trainer.device, config.trainer.dtype, seed=config.system.seed)
    return train_on_prepared(config)


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("train", sys.argv[1:]))
