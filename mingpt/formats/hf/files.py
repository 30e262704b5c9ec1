"""The files of a Hugging Face model folder: config.json, the weights, and fetching them from the Hub.

A folder holds config.json and one of WEIGHT_FILES (maybe sharded, named by an *.index.json).
Weights are read from safetensors, or from pytorch_model.bin with weights_only=True: nothing from
a downloaded file is ever unpickled as code. Writing goes through utils.atomic_path, file by file,
config.json last, so a crash never leaves a config next to weights that are not its own.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mingpt.utils import atomic_path, write_json

CONFIG_FILE = "config.json"
# weight files in the order transformers itself prefers them; *.index.json name the shards
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json", "model-*.safetensors")
PYTORCH_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin")


def is_hf_folder(path: str | Path) -> bool:
    """True if path is a folder holding a Hugging Face config.json."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_config(path: Path) -> dict[str, Any]:
    """The folder's config.json as a dict (a corrupt file is refused in one line)."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path / CONFIG_FILE)!r} is not valid JSON ({e}); the file is "
                         f"corrupt or incomplete, download it again") from e
    if not isinstance(config, dict):
        raise ValueError(f"{str(path / CONFIG_FILE)!r} holds a {type(config).__name__}, not a JSON "
                         f"object; it is not a Hugging Face config, download it again")
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder, from the first weight file that exists (see WEIGHT_FILES)."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            break
    else:
        raise FileNotFoundError(f"{str(path)!r} has {CONFIG_FILE} but no weights ("
                                f"{' or '.join(WEIGHT_FILES)}); download the model's weights too")
    files = [path / name]
    if name.endswith(".index.json"):  # sharded: the index maps each tensor to its shard
        files = [path / f for f in sorted(set(json.loads(files[0].read_text())["weight_map"].values()))]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                state.update(load_file(str(file), device="cpu"))
            else:  # weights_only: plain tensors only, a malicious pickle cannot run code
                state.update(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as e:
            raise ValueError(f"cannot read weights from {str(file)!r} ({type(e).__name__}: {e}); "
                             f"the file is corrupt or incomplete, download it again") from e
    return state


def write_folder(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write config.json + model.safetensors into directory (made if needed); return it.

    The old config.json goes first and the new one comes last, each file atomically: a crash
    in between leaves weights without a config, which no loader mistakes for a model.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})  # transformers wants "format"
    write_json(directory / CONFIG_FILE, config)
    return directory


def download(name: str, repo: str, files: tuple[str, ...] = (), weights: bool = True) -> Path:
    """Fetch a hub model's config.json, its weights (safetensors if the repository has them, else
    pytorch_model.bin) and `files` into the Hugging Face cache; return the snapshot folder.

    huggingface_hub reuses its cache (also offline) and times out on a dead network, so this
    never hangs; every failure becomes one message that says how to get the files instead.
    """
    how = (f"connect to the internet, or download the model elsewhere (hf download {repo}) and "
           f"pass its folder ({CONFIG_FILE} + model.safetensors) instead of the name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"loading {name!r} needs the huggingface_hub package to download "
                                f"it: pip install huggingface_hub, or {how}") from None

    def fetch(patterns: tuple[str, ...]) -> Path:
        try:
            return Path(snapshot_download(repo, allow_patterns=[CONFIG_FILE, *files, *patterns]))
        except Exception as e:
            raise FileNotFoundError(f"could not download {name!r} ({repo}) from the Hugging Face "
                                    f"Hub ({type(e).__name__}); {how}") from e

    folder = fetch(SAFETENSORS if weights else ())
    if weights and not any((folder / f).is_file() for f in WEIGHT_FILES):
        folder = fetch(PYTORCH_BIN)  # an older repository: no safetensors conversion
    return folder
