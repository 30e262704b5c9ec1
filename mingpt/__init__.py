"""mingpt: a small, readable and fast library for training GPT language models in PyTorch."""
__version__ = "0.1.0"

from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.utils import CfgNode, set_seed, setup_logging

__all__ = ["GPT", "Trainer", "CfgNode", "set_seed", "setup_logging", "__version__"]
