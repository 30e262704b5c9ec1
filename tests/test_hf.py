"""Hugging Face GPT-2 interop: a small random transformers GPT-2 stands in for OpenAI's weights,
so these tests run offline; the hub download is replaced by a stub that fails like a dead network."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import ULPS_FORWARD, assert_close_to, tiny_gpt
from mingpt.formats import hf
from mingpt.model import GPT

transformers = pytest.importorskip("transformers")

VOCAB = 100


@pytest.fixture
def hf_model():
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32,
                                     bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture
def hf_folder(tmp_path, hf_model):
    folder = tmp_path / "hf"
    hf_model.save_pretrained(folder)  # config.json + model.safetensors
    return folder


def save_as_pytorch_bin(hf_model, folder):
    """The layout of OpenAI's original pytorch_model.bin: GPT2Model's key names (no
    "transformer." prefix, no lm_head) plus the attn.bias / attn.masked_bias mask buffers."""
    folder.mkdir()
    hf_model.config.save_pretrained(folder)
    state = dict(hf_model.transformer.state_dict())
    n = hf_model.config.n_positions
    for i in range(hf_model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")


def hf_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(idx).logits


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hf_gpt2_loads_with_the_same_logits_and_greedy_tokens(tmp_path, hf_model, hf_folder, weights):
    folder = hf_folder
    if weights == "pytorch_model.bin":
        folder = tmp_path / "bin"
        save_as_pytorch_bin(hf_model, folder)
    model = GPT.from_pretrained(folder).eval()
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (2, 2, 32)
    assert (model.config.vocab_size, model.config.block_size) == (VOCAB, 32)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())

    idx = torch.randint(VOCAB, (2, 32))
    logits, _ = model(idx)
    assert_close_to(hf_logits(hf_model, idx), logits, ULPS_FORWARD)

    prompt = torch.randint(VOCAB, (2, 6))
    expected = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=0,
                                 max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert torch.equal(model.generate(prompt, 20)[:, 6:], expected[:, 6:])


def test_export_reloads_in_transformers_with_identical_logits(tmp_path):
    model = tiny_gpt(vocab_size=VOCAB, block_size=32).eval()
    with torch.no_grad():  # non-zero biases and LayerNorms, so a missed tensor would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = model.save_pretrained(tmp_path / "export")
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "model.safetensors"]

    reloaded = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = torch.randint(VOCAB, (3, 32))
    logits, _ = model(idx)
    assert_close_to(hf_logits(reloaded, idx), logits, ULPS_FORWARD)
    # and back into mingpt: bit-identical weights
    again = GPT.from_pretrained(folder)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_export_overwrites_a_previous_export_and_leaves_no_temporary_files(tmp_path):
    folder = tmp_path / "export"
    tiny_gpt(vocab_size=VOCAB, n_layer=3).save_pretrained(folder)
    model = tiny_gpt(vocab_size=VOCAB, n_layer=2)
    hf.save(model, folder)
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["n_layer"] == 2
    assert torch.equal(GPT.from_pretrained(folder).transformer.wte.weight, model.transformer.wte.weight)


def test_missing_and_misshapen_weights_are_refused_clearly(hf_folder):
    weights = hf_folder / "model.safetensors"
    state = load_file(weights)
    del state["transformer.h.1.mlp.c_fc.bias"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_fc.bias'\]"):
        GPT.from_pretrained(hf_folder)

    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps({**config, "vocab_size": 101}))
    state["transformer.h.1.mlp.c_fc.bias"] = torch.zeros(128)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"transformer.wte.weight has shape \(100, 32\) but this "
                                         r"config.json needs \(101, 32\)"):
        GPT.from_pretrained(hf_folder)


def test_corrupt_or_absent_files_get_clear_errors(hf_folder):
    weights = hf_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or incomplete"):
        GPT.from_pretrained(hf_folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="has config.json but no weights"):
        GPT.from_pretrained(hf_folder)
    (hf_folder / "config.json").write_text('{"n_layer": 2,')
    with pytest.raises(ValueError, match="config.json' is not valid JSON"):
        GPT.from_pretrained(hf_folder)


def test_an_untied_lm_head_is_refused(tmp_path, hf_model):
    folder = tmp_path / "untied"
    save_as_pytorch_bin(hf_model, folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"] = torch.randn(VOCAB, 32)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="lm_head differs from the token embedding"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize("change, message", [
    ({"activation_function": "relu"}, "activation_function 'relu' is not the tanh GELU"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06, not 1e-5"),
    ({"n_inner": 64}, "n_inner is 64, not 4 * n_embd = 128"),
])
def test_unsupported_architectures_are_refused(hf_folder, change, message):
    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError) as e:
        GPT.from_pretrained(hf_folder)
    assert message in str(e.value) and "original GPT-2 architecture" in str(e.value)


def test_an_unknown_model_type_is_refused_naming_those_mingpt_loads(hf_folder):
    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps({**config, "model_type": "gptj"}))
    with pytest.raises(ValueError, match=r"model_type 'gptj' is not one mingpt loads; it loads "
                                         r"'gpt2', 'openai-gpt', 'gpt_neo'"):
        GPT.from_pretrained(hf_folder)


def test_hub_name_without_network_fails_with_one_clear_message(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.chdir(tmp_path)  # no local folder named gpt2
    calls = []

    def offline(repo_id, **kwargs):
        calls.append(repo_id)
        raise OSError("Connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError) as e:
        GPT.from_pretrained("gpt2-medium")
    assert calls == ["openai-community/gpt2-medium"]
    assert "could not download 'gpt2-medium'" in str(e.value)
    assert "connect to the internet" in str(e.value) and "pass its folder" in str(e.value)


def test_hub_name_without_huggingface_hub_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match="pip install huggingface_hub"):
        GPT.from_pretrained("gpt2")


def test_hub_name_loads_from_what_the_download_returns(monkeypatch, tmp_path, hf_folder, hf_model):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(hf_folder))
    model = GPT.from_pretrained("gpt2").eval()
    idx = torch.randint(VOCAB, (1, 8))
    assert_close_to(hf_logits(hf_model, idx), model(idx)[0], ULPS_FORWARD)


def test_other_names_and_missing_paths_still_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'gpt-nano' names a model shape without released weights"):
        GPT.from_pretrained("gpt-nano")
    with pytest.raises(FileNotFoundError, match="no mingpt run or checkpoint at"):
        GPT.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no mingpt checkpoint"):
        GPT.from_pretrained(tmp_path)


def test_an_untied_head_loads_and_exports_as_its_own_weights(tmp_path):
    """tie_word_embeddings=false (minGPT's default, and GPT2Config's option): the head is its own
    tensor both ways."""
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32,
                                     bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        hf_model.lm_head.weight.normal_()  # (else it might equal wte by its init)
    hf_model.save_pretrained(tmp_path / "hf")
    model = GPT.from_pretrained(tmp_path / "hf").eval()
    assert not model.config.tie_embeddings and model.lm_head.weight is not model.transformer.wte.weight
    idx = torch.randint(VOCAB, (2, 32))
    assert_close_to(hf_logits(hf_model, idx), model(idx)[0], ULPS_FORWARD)
    folder = model.save_pretrained(tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    assert_close_to(hf_logits(reloaded, idx), model(idx)[0], ULPS_FORWARD)
