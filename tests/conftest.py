"""Fixtures (the helpers themselves are in helpers.py): the seed, and the Tiny Shakespeare file
CI provides."""
from pathlib import Path

import pytest
import torch

from helpers import SHAKESPEARE


@pytest.fixture
def shakespeare_path() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip(f"Tiny Shakespeare is not at {SHAKESPEARE} (CI provides it in ../shared/data)")
    return SHAKESPEARE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
