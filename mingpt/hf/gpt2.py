"""Hugging Face GPT-2 <-> mingpt: tensors and configs, to load OpenAI's GPT-2 weights (or any HF
GPT-2) and to export ours. pretrained.py decides when a path is such a folder.

mingpt's GPT already uses Hugging Face's parameter names, so tensors keep their names.
One difference: HF's GPT-2 keeps its linear layers as `Conv1D`, whose weight is stored (in, out),
where nn.Linear stores (out, in); the c_attn, c_proj and c_fc weights are transposed both ways.
HF checkpoints may also carry the causal-mask buffers attn.bias / attn.masked_bias, which we drop
(mingpt builds its mask on the fly), and may omit lm_head.weight, which is tied to wte unless the config says tie_word_embeddings=false.
Weights are read from safetensors, or from pytorch_model.bin with weights_only=True: nothing
from a downloaded file is ever unpickled as code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from mingpt.utils import atomic_path, unwrap, write_json

# the hub names of OpenAI's released GPT-2 weights, and the repositories that hold them
HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
CONFIG_FILE = "config.json"
# weight files in the order transformers itself prefers them; *.index.json name the shards
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
CONV1D_SUFFIXES = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")  # in attn and mlp
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # HF's causal-mask buffers, not weights
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh approximation mingpt uses
GPT2_PARTS = {"norm": "layernorm", "position_encoding": "learned", "activation": "gelu_tanh",
              "attention_pattern": ("global",)}  # the model config's parts that GPT-2 has


def is_hf_folder(path: str | Path) -> bool:
    """True if path is a folder holding a Hugging Face config.json."""
    return (Path(path) / CONFIG_FILE).is_file()


def load_hf_gpt2(cls: type[nn.Module], name_or_path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build a `cls` (mingpt's GPT) from a local HF GPT-2 folder or one of the HUB_MODELS names.

    The model comes back in training mode, like any freshly built module: call .eval() to sample.
    """
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in HUB_MODELS:
        path = _download(str(name_or_path))
    if not is_hf_folder(path):
        raise FileNotFoundError(f"no Hugging Face GPT-2 at {str(path)!r} (it needs {CONFIG_FILE} "
                                f"and model.safetensors); pass such a folder or one of "
                                f"{', '.join(HUB_MODELS)}")
    try:
        hf_config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path / CONFIG_FILE)!r} is not valid JSON ({e}); the file is "
                         f"corrupt or incomplete, download it again") from e
    config = cls.get_default_config()
    config.merge_from_dict(config_from_hf(hf_config, where=str(path / CONFIG_FILE)))
    # build on the meta device: random init would be thrown away, and costs seconds for gpt2-xl
    with torch.device("meta"):
        model = cls(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = hf_to_mingpt(read_hf_weights(path), expected, where=str(path), tied=config.tie_embeddings)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced both: tie again
    return model.to(device)


def config_from_hf(hf: dict[str, Any], where: str = CONFIG_FILE) -> dict[str, Any]:
    """mingpt model config values from an HF GPT-2 config.json, refusing what mingpt can't run.

    Missing keys take GPT2Config's defaults, as transformers itself would.
    """
    def refuse(what: str) -> ValueError:
        return ValueError(f"{where}: {what}; mingpt only runs the original GPT-2 architecture")

    if hf.get("model_type", "gpt2") != "gpt2":
        raise refuse(f"model_type is {hf['model_type']!r}, not 'gpt2'")
    if hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise refuse(f"activation_function {hf['activation_function']!r} is not the tanh GELU "
                     f"({' or '.join(GELU_TANH)})")
    if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise refuse(f"layer_norm_epsilon is {hf['layer_norm_epsilon']}, not 1e-5")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise refuse(f"n_inner is {hf['n_inner']}, not 4 * n_embd = {4 * n_embd}")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise refuse("attention scores are not scaled by 1/sqrt(head_dim) alone")
    if hf.get("add_cross_attention", False):
        raise refuse("add_cross_attention is true (an encoder-decoder model)")
    return dict(
        model_type=None,
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        embd_pdrop=hf.get("embd_pdrop", 0.1),
        resid_pdrop=hf.get("resid_pdrop", 0.1),
        attn_pdrop=hf.get("attn_pdrop", 0.1),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        **GPT2_PARTS,
    )


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
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


def hf_to_mingpt(hf_state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
                 where: str = "checkpoint", tied: bool = True) -> dict[str, torch.Tensor]:
    """Rename and transpose HF GPT-2 tensors into mingpt's state dict, checking every shape.

    `expected` maps each mingpt parameter name to its shape. HF files come in two flavours:
    GPT2LMHeadModel's ("transformer.h.0...", "lm_head.weight") and GPT2Model's ("h.0...").
    """
    state: dict[str, torch.Tensor] = {}
    head = None
    for key, tensor in hf_state.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key == "lm_head.weight":
            head = tensor
            continue
        name = key if key.startswith("transformer.") else f"transformer.{key}"
        conv1d = name.endswith(CONV1D_SUFFIXES) and tensor.dim() == 2  # else the shape check fails
        state[name] = tensor.t() if conv1d else tensor
    wte = state.get("transformer.wte.weight")
    if tied and wte is not None:
        if head is not None and not (head.shape == wte.shape and torch.equal(head, wte)):
            raise ValueError(f"{where}: lm_head differs from the token embedding wte although "
                             f"tie_word_embeddings is true, so transformers itself would not use it; "
                             f"this model cannot be loaded as it was trained")
        state["lm_head.weight"] = wte
    elif head is not None:
        state["lm_head.weight"] = head
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match a GPT-2 of this config.json: "
                         f"missing {missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}"
                         f"{' (and more)' if len(missing) > 5 or len(unexpected) > 5 else ''}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{where}: {name} has shape {tuple(state[name].shape)} but this "
                             f"config.json needs {shape}; config and weights do not belong together")
    # mingpt computes in float32; contiguous() because the transposes above are views
    return {name: t.to(torch.float32).contiguous() for name, t in state.items()}


def save_hf_gpt2(model: nn.Module, directory: str | Path) -> Path:
    """Export a mingpt GPT as an HF GPT-2 folder (config.json + model.safetensors); return it.

    `transformers.GPT2LMHeadModel.from_pretrained(directory)` loads the result; transformers is
    not needed to write it. Each file is written atomically, and the old config.json goes first,
    so a crash never leaves a config with mismatched weights.
    """
    model = unwrap(model)
    config = config_to_hf(model)  # (refuses a model GPT-2 cannot describe, before writing)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # tied to wte: transformers re-ties it on load
        tensor = tensor.detach().to("cpu")
        state[name] = (tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor).contiguous()
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})  # transformers wants "format"
    write_json(directory / CONFIG_FILE, config)
    return directory


def config_to_hf(model: nn.Module) -> dict[str, Any]:
    """The HF GPT-2 config.json describing a mingpt GPT (refused if it is not a GPT-2)."""
    c = model.config
    for key, gpt2 in GPT2_PARTS.items():
        if getattr(c, key) != gpt2:
            raise ValueError(f"save_pretrained writes Hugging Face GPT-2 folders, and this model's "
                             f"{key}={getattr(c, key)!r} is not GPT-2's {gpt2!r}")
    dtype = next(model.parameters()).dtype
    gpt2_vocab = c.vocab_size >= 50257  # GPT-2's BPE (maybe padded): <|endoftext|> is 50256
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new",
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_embd": c.n_embd,
        "n_inner": None,
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "embd_pdrop": c.embd_pdrop,
        "resid_pdrop": c.resid_pdrop,
        "attn_pdrop": c.attn_pdrop,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": 50256 if gpt2_vocab else None,
        "eos_token_id": 50256 if gpt2_vocab else None,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def _download(name: str) -> Path:
    """Fetch config.json and the safetensors weights of a HUB_MODELS name into the HF cache.

    huggingface_hub reuses its cache (also offline) and times out on a dead network, so this
    never hangs; every failure becomes one message that says how to get the weights instead.
    """
    how = ("connect to the internet, or download the model elsewhere and pass its folder "
           "(config.json + model.safetensors) instead of the name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"loading {name!r} needs the huggingface_hub package to download "
                                f"it: pip install huggingface_hub, or {how}") from None
    try:
        folder = snapshot_download(HUB_MODELS[name], allow_patterns=[
            CONFIG_FILE, "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"])
    except Exception as e:
        raise FileNotFoundError(f"could not download {name!r} ({HUB_MODELS[name]}) from the "
                                f"Hugging Face Hub ({type(e).__name__}); {how}") from e
    return Path(folder)
