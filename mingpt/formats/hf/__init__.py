"""Hugging Face <-> mingpt: load released GPT-2, GPT-1 and GPT-Neo weights (or any HF folder of
those families) into mingpt's GPT, and export a GPT as the family that describes it exactly.

config.json's model_type picks the family, one module each: gpt2.py ("gpt2"), openai_gpt.py
("openai-gpt"), gpt_neo.py ("gpt_neo"). A family knows its hub names, turns config.json into a
mingpt model config (refusing, in one line, what mingpt cannot run exactly), and maps tensors both
ways; common.py checks the result, files.py reads, downloads and writes the files.
pretrained.py decides when a path is such a folder and hands over the model class.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn

from mingpt.formats.hf import common, files, gpt2, gpt_neo, openai_gpt
from mingpt.formats.hf.files import CONFIG_FILE, is_hf_folder
from mingpt.utils import unwrap

__all__ = ["FAMILIES", "HUB_MODELS", "is_hf_folder", "load", "save", "model_type", "tokenizer_of"]

FAMILIES: dict[str, ModuleType] = {f.MODEL_TYPE: f for f in (gpt2, openai_gpt, gpt_neo)}
# every hub name mingpt loads -> the repository holding it
HUB_MODELS: dict[str, str] = {name: repo for f in FAMILIES.values() for name, repo in f.HUB_MODELS.items()}
_FAMILY_OF_NAME = {name: f for f in FAMILIES.values() for name in f.HUB_MODELS}


def family_of(hf_config: dict, where: str) -> ModuleType:
    """The family module for a config.json (one without model_type is GPT-2's, as in 2019)."""
    kind = hf_config.get("model_type", gpt2.MODEL_TYPE)
    if kind not in FAMILIES:
        raise ValueError(f"{where}: model_type {kind!r} is not one mingpt loads; it loads "
                         f"{', '.join(map(repr, FAMILIES))} (GPT-2, GPT-1, GPT-Neo)")
    return FAMILIES[kind]


def model_type(name_or_path: str | Path) -> str:
    """The model_type of an HF folder's config.json, or of a hub name's family (nothing fetched)."""
    path = Path(name_or_path)
    if is_hf_folder(path):
        return family_of(files.read_config(path), str(path / CONFIG_FILE)).MODEL_TYPE
    if not path.exists() and str(name_or_path) in _FAMILY_OF_NAME:
        return _FAMILY_OF_NAME[str(name_or_path)].MODEL_TYPE
    raise FileNotFoundError(f"{str(name_or_path)!r} is neither a Hugging Face folder ({CONFIG_FILE}) "
                            f"nor a hub name mingpt knows ({', '.join(HUB_MODELS)})")


def tokenizer_of(name_or_path: str | Path) -> tuple[str, Path | None]:
    """Which tokenizer a pretrained model's ids belong to: ("gpt2", None) for GPT-2's BPE (mingpt's
    own, nothing to fetch), else (its kind, the folder that should hold its files): for a hub
    name those are downloaded (config.json and the tokenizer files only)."""
    family = FAMILIES[model_type(name_or_path)]
    needed = getattr(family, "TOKENIZER_FILES", ())  # (none for GPT-2's BPE)
    if not needed:
        return family.TOKENIZER, None
    path = Path(name_or_path)
    if not is_hf_folder(path):  # a hub name
        path = files.download(str(name_or_path), HUB_MODELS[str(name_or_path)], needed, weights=False)
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        repo = next(iter(family.HUB_MODELS.values()))
        raise FileNotFoundError(f"{str(path)!r} holds a {family.NAME} model but not its tokenizer's "
                                f"{' and '.join(missing)}; get them with `hf download {repo} "
                                f"{' '.join(needed)} --local-dir {path}`, or pass the hub name "
                                f"{next(iter(family.HUB_MODELS))!r} instead of the folder")
    return family.TOKENIZER, path


def load(cls: type[nn.Module], name_or_path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build a `cls` (mingpt's GPT) from a local HF folder or one of the HUB_MODELS names.

    The model comes back in training mode, like any freshly built module: call .eval() to sample.
    """
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in HUB_MODELS:
        family = _FAMILY_OF_NAME[str(name_or_path)]
        path = files.download(str(name_or_path), HUB_MODELS[str(name_or_path)],
                              getattr(family, "TOKENIZER_FILES", ()))
    if not is_hf_folder(path):
        raise FileNotFoundError(f"no Hugging Face model at {str(path)!r} (it needs {CONFIG_FILE} "
                                f"and model.safetensors); pass such a folder or one of "
                                f"{', '.join(HUB_MODELS)}")
    where = str(path / CONFIG_FILE)
    hf_config = files.read_config(path)
    family = family_of(hf_config, where)
    config = cls.get_default_config()
    config.merge_from_dict(family.config_from_hf(hf_config, where))
    # build on the meta device: random init would be thrown away, and costs seconds for gpt2-xl
    with torch.device("meta"):
        model = cls(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = common.finish_state(family.to_mingpt(files.read_weights(path)), expected, str(path),
                                tied=config.tie_embeddings, family=family.NAME)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced both: tie again
    return model.to(device)


def save(model: nn.Module, directory: str | Path) -> Path:
    """Export a mingpt GPT as the HF folder (config.json + model.safetensors) of the first family
    that describes it exactly; return the folder. A model none describes is refused, naming for
    each family the part it lacks, before anything is written.

    transformers' from_pretrained loads the result (AutoModelForCausalLM, or the family's class);
    transformers is not needed to write it.
    """
    model = unwrap(model)
    c = model.config
    lacks = {}
    for family in FAMILIES.values():
        lacks[family.NAME] = family.mismatch(c)
        if lacks[family.NAME] is None:
            break
    else:
        raise ValueError(f"save_pretrained writes Hugging Face {', '.join(lacks)} folders and none "
                         f"of them has this model ({'; '.join(f'{k}: {v}' for k, v in lacks.items())}); "
                         f"save it as a mingpt checkpoint instead (a Trainer's run folder, or "
                         f"mingpt.training.checkpoint.write(folder, model, 0)), which GPT.from_pretrained loads")
    state = {name: t.detach().to("cpu") for name, t in model.state_dict().items()
             if not (name == "lm_head.weight" and c.tie_embeddings)}  # tied: transformers re-ties it
    dtype = common.dtype_name(next(model.parameters()))
    return files.write_folder(directory, family.config_to_hf(c, dtype), family.from_mingpt(state))
