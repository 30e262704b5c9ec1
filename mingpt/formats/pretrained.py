"""Loading and saving whole models, whatever the format: a mingpt run folder or checkpoint
folder, a Hugging Face folder, or a hub name. GPT.from_pretrained and save_pretrained delegate
here and hand over their class, so this module never imports the model. A pretrained model
reads the ids of its own tokenizer (tokenizer_for): a run's tokenizer.json; GPT-2 and GPT-Neo read
GPT-2's BPE; GPT-1 has its own lower-cased BPE, which transformers reads from the model's
vocab.json and merges.txt. load_with_tokenizer brings both (sampling, evaluation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from mingpt.bpe import BPETokenizer
from mingpt.data import tokenizers
from mingpt.data.tokenizers import Tokenizer
from mingpt.formats import hf
from mingpt.training import checkpoint
from mingpt.training.run_folder import RunFolder

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


def load_with_tokenizer(cls: type[nn.Module], source: str | Path, device: str | torch.device = "cpu",
                        which: str | None = None) -> tuple[nn.Module, Tokenizer]:
    """The `cls` model of source (a mingpt run folder, a Hugging Face folder or a hub name, by
    cls.from_pretrained), in eval mode, and the tokenizer whose ids it reads (a run's
    tokenizer.json, or its family's), which must fit the model's vocabulary."""
    # a run's tokenizer is its tokenizer.json (a run's config.json is no Hugging Face config)
    if RunFolder(Path(source)).holds_checkpoint():
        tokenizer = tokenizers.load(source)
    else:
        tokenizer = tokenizer_for(source)
    model = cls.from_pretrained(source, device=device, checkpoint=which).eval()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer found for {str(source)!r} has {tokenizer.vocab_size} tokens but the "
                         f"model knows only {model.config.vocab_size}: it was trained with another tokenizer; "
                         f"use the mingpt run folder it came from instead")
    return model, tokenizer


# -- a pretrained model's tokenizer ----------------------------------------------------------------
class TransformersTokenizer:
    """A transformers tokenizer behind mingpt's interface (encode, decode, vocab_size, eot_token):
    for pretrained models whose tokenizer mingpt does not implement itself (GPT-1's)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eot_token = tokenizer.eos_token_id  # GPT-1 has none: an empty prompt is refused

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        # no clean-up of spaces before punctuation: it would rewrite text already shown
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def _openai_gpt(folder: Path) -> TransformersTokenizer:
    try:
        from transformers import OpenAIGPTTokenizer
    except ImportError:
        raise FileNotFoundError("GPT-1's tokenizer is read by the transformers package: "
                                "pip install transformers") from None
    return TransformersTokenizer(OpenAIGPTTokenizer.from_pretrained(str(folder)))


# a pretrained model's tokenizer (hf.tokenizer_of's kind) -> how to make it from the model's folder
TOKENIZERS: dict[str, Callable[[Path | None], Tokenizer]] = {
    "gpt2": lambda folder: BPETokenizer(),  # GPT-2 and GPT-Neo: the same BPE, mingpt's own
    "openai-gpt": _openai_gpt,
}


def tokenizer_for(name_or_path: str | Path) -> Tokenizer:
    """The tokenizer whose ids a pretrained model reads: a mingpt run folder's tokenizer.json, or
    for a Hugging Face folder or hub name the tokenizer of its family (config.json's model_type).

        tokenizer_for("EleutherAI/gpt-neo-125m")  # GPT-2's BPE: nothing is downloaded
        tokenizer_for("openai-gpt")               # GPT-1's: fetches vocab.json and merges.txt
    """
    path = Path(name_or_path)
    if (path / tokenizers.SPEC_FILE).is_file():
        return tokenizers.load(path)
    if not is_pretrained(name_or_path):
        raise FileNotFoundError(f"{str(name_or_path)!r} has no {tokenizers.SPEC_FILE} and is neither a Hugging "
                                f"Face folder (config.json) nor a hub name mingpt knows; pass a run "
                                f"folder, such a folder, or one of {', '.join(hf.HUB_MODELS)}")
    kind, folder = hf.tokenizer_of(name_or_path)
    return TOKENIZERS[kind](folder)


def is_pretrained(name_or_path: str | Path) -> bool:
    """Whether name_or_path is a Hugging Face folder or a hub name mingpt knows."""
    path = Path(name_or_path)
    return hf.is_hf_folder(path) or (not path.exists() and str(name_or_path) in hf.HUB_MODELS)


def pretrained_kind(name_or_path: str | Path) -> str:
    """The tokenizer kind (a key of TOKENIZERS) of a Hugging Face folder or hub name, without
    fetching anything: 'gpt2' for GPT-2 and GPT-Neo, 'openai-gpt' for GPT-1."""
    return hf.FAMILIES[hf.model_type(name_or_path)].TOKENIZER
