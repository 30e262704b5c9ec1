"""Loading and saving whole models, whatever the format: a mingpt run folder or checkpoint
folder, a Hugging Face folder, or a hub name. GPT.from_pretrained and save_pretrained delegate
here and hand over their class, so this module never imports the model.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from mingpt import checkpoint, hf
from mingpt.run_folder import RunFolder

HUB_MODELS = hf.HUB_MODELS


def load(cls: type[nn.Module], name_or_path: str | Path, device: str | torch.device = "cpu",
         which: str | None = None) -> nn.Module:
    """A `cls` model from name_or_path: a mingpt run folder (its newest intact checkpoint, or the
    one `which` names), a mingpt checkpoint folder, a Hugging Face folder, or a hub name."""
    path = Path(name_or_path)
    run = RunFolder(path)
    if run.holds_checkpoint():
        return from_checkpoint(cls, *run.find_checkpoint(which), device)
    if (path / checkpoint.META_FILE).exists():
        return from_checkpoint(cls, checkpoint.verify(path), path, device)
    if hf.is_hf_folder(path):  # config.json's model_type picks the family (GPT-2, GPT-1, GPT-Neo)
        return hf.load(cls, path, device)
    if path.exists():
        raise FileNotFoundError(f"{str(path)!r} holds no mingpt checkpoint ({checkpoint.META_FILE} and "
                                f"{checkpoint.WEIGHTS_FILE}) and no Hugging Face model; pass a run "
                                f"folder that has saved one")
    if str(name_or_path) in HUB_MODELS:
        return hf.load(cls, str(name_or_path), device)
    raise FileNotFoundError(f"no mingpt run or checkpoint at {str(path)!r}; pass the "
                            f"--system.work_dir of a finished run, a Hugging Face GPT-2, GPT-1 or GPT-Neo "
                            f"folder, or one of {', '.join(HUB_MODELS)}")


def from_checkpoint(cls: type[nn.Module], meta: dict, folder: Path, device: str | torch.device) -> nn.Module:
    """A `cls` built from a checkpoint's model config, with its weights."""
    if meta.get("model_config") is None:
        raise ValueError(f"the checkpoint in {str(folder)!r} is not of a GPT (no model config)")
    config = cls.get_default_config()
    config.merge_from_dict(meta["model_config"])
    model = cls(config)
    checkpoint.load_weights(model, folder, device)
    return model.to(device)


def save(model: nn.Module, directory: str | Path) -> Path:
    """Export model as the Hugging Face folder of the family that describes it exactly (GPT-2,
    GPT-1 or GPT-Neo), which transformers loads; any other model is refused."""
    return hf.save(model, directory)
