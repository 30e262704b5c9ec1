"""Shared test helpers: tiny models and the path of the Tiny Shakespeare file CI provides."""
from pathlib import Path

import pytest
import torch

from mingpt.model import GPT

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = PROJECT_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def tiny_gpt(vocab_size: int = 11, block_size: int = 16, dropout: float = 0.0, **dims) -> GPT:
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd = dims.get("n_layer", 2), dims.get("n_head", 2), dims.get("n_embd", 32)
    config.vocab_size, config.block_size = vocab_size, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = dropout
    return GPT(config)


@pytest.fixture
def shakespeare_path() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip(f"Tiny Shakespeare is not at {SHAKESPEARE} (CI provides it in ../shared/data)")
    return SHAKESPEARE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
