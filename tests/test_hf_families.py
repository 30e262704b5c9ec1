"""GPT-1 (openai-gpt) and GPT-Neo from Hugging Face, and back: small random transformers models
stand in for the released weights, so these tests run offline. GPT-Neo is compared against
transformers' eager attention, the only one of its paths that applies the local window."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import ULPS_FORWARD, tiny_gpt, ulps_apart
from mingpt.bpe import BPETokenizer
from mingpt.cli import run_job
from mingpt.data import tokenizers
from mingpt.formats import pretrained
from mingpt.jobs.pipeline import build_model, train_config
from mingpt.model import GPT

transformers = pytest.importorskip("transformers")

VOCAB, WINDOW, T = 100, 4, 32  # T = 8 windows: the band matters


def perturbed(model):
    """Non-zero biases and LayerNorms, so that a tensor missed or misplaced would show."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def neo_config(**changes):
    return transformers.GPTNeoConfig(**{
        "num_layers": 4, "num_heads": 2, "hidden_size": 32, "vocab_size": VOCAB, "max_position_embeddings": T,
        "attention_types": [[["global", "local"], 2]], "window_size": WINDOW,
        "bos_token_id": None, "eos_token_id": None, **changes})


def hf_neo(**changes):
    config = neo_config(**changes)
    return perturbed(transformers.GPTNeoForCausalLM._from_config(config, attn_implementation="eager"))


def hf_gpt1(**changes):
    config = transformers.OpenAIGPTConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": VOCAB,
                                             "n_positions": T, **changes})
    return perturbed(transformers.OpenAIGPTLMHeadModel(config))


@pytest.fixture(scope="module")
def neo(tmp_path_factory):
    torch.manual_seed(0)
    model = hf_neo()
    folder = tmp_path_factory.mktemp("neo")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def gpt1(tmp_path_factory):
    torch.manual_seed(1)
    model = hf_gpt1()
    folder = tmp_path_factory.mktemp("gpt1")
    model.save_pretrained(folder)
    return model, folder


def hf_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(idx).logits


def hf_greedy(hf_model, prompt, n):
    return hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=0,
                             max_new_tokens=n, min_new_tokens=n, do_sample=False)


def ulps_from(model, hf_model, idx):
    """How far the model's logits are from the Hugging Face model's (helpers.ulps_apart)."""
    return ulps_apart(hf_logits(hf_model, idx), model(idx)[0])


def test_hf_gpt_neo_loads_with_its_pattern_window_and_unscaled_attention(neo):
    hf_model, folder = neo
    model = GPT.from_pretrained(folder).eval()
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size) == (4, 2, 32, VOCAB, T)
    assert c.attention_pattern == ("global", "local") and c.window_size == WINDOW
    assert (c.attention_scale, c.qkv_bias, c.norm_position, c.activation) == (1.0, False, "pre", "gelu_tanh")
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(VOCAB, (2, T))
    assert ulps_from(model, hf_model, idx) <= ULPS_FORWARD
    # greedy decoding through the ring cache of the local layers, well past the window
    prompt = torch.randint(VOCAB, (2, 6))
    assert torch.equal(model.generate(prompt, 20), hf_greedy(hf_model, prompt, 20))


def test_gpt_neo_with_its_pattern_forced_all_global_gives_other_logits(neo):
    """So that the local layers really run banded: the same weights, every layer global."""
    hf_model, folder = neo
    model = GPT.from_pretrained(folder).eval()
    config = GPT.get_default_config()
    config.merge_from_dict({**model.config.to_dict(), "attention_pattern": ("global",)})
    everywhere = GPT(config).eval()
    everywhere.load_state_dict(model.state_dict())
    idx = torch.randint(VOCAB, (1, T))
    assert ulps_from(model, hf_model, idx) <= ULPS_FORWARD
    assert ulps_from(everywhere, hf_model, idx) > 1000 * ULPS_FORWARD  # far more than rounding


def test_hf_gpt1_loads_as_post_norm_blocks_with_the_same_logits_and_greedy_tokens(gpt1):
    hf_model, folder = gpt1
    model = GPT.from_pretrained(folder).eval()
    c = model.config
    assert (c.norm_position, c.activation, c.attention_pattern, c.block_size) == ("post", "gelu_tanh", ("global",), T)
    assert isinstance(model.transformer.ln_f, torch.nn.Identity)
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(VOCAB, (2, T))
    assert ulps_from(model, hf_model, idx) <= ULPS_FORWARD
    prompt = torch.randint(VOCAB, (2, 6))
    assert torch.equal(model.generate(prompt, 20), hf_greedy(hf_model, prompt, 20))


def test_gpt1s_gelu_is_the_tanh_approximation_not_the_exact_one(gpt1):
    """transformers runs openai-gpt's afn='gelu' as gelu_new (tanh), as OpenAI's code did: exact GELU
    would be off by more than the rounding the loaded model meets."""
    hf_model, folder = gpt1
    model = GPT.from_pretrained(folder).eval()
    config = GPT.get_default_config()
    config.merge_from_dict({**model.config.to_dict(), "activation": "gelu"})
    exact = GPT(config).eval()
    exact.load_state_dict(model.state_dict())
    assert ulps_from(exact, hf_model, torch.randint(VOCAB, (2, T))) > ULPS_FORWARD


@pytest.mark.parametrize("family", ["gpt_neo", "openai-gpt"])
def test_export_reloads_in_transformers_with_identical_logits(tmp_path, neo, gpt1, family):
    hf_model, folder = neo if family == "gpt_neo" else gpt1
    model = GPT.from_pretrained(folder).eval()
    out = model.save_pretrained(tmp_path / "export")
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    # transformers' own names, the tied head left out as transformers itself writes it
    assert sorted(load_file(str(out / "model.safetensors"))) == sorted(set(hf_model.state_dict()) - {"lm_head.weight"})
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded) is type(hf_model)
    idx = torch.randint(VOCAB, (2, T))
    assert ulps_from(model, reloaded, idx) <= ULPS_FORWARD
    assert torch.equal(hf_logits(reloaded, idx), hf_logits(hf_model, idx))
    again = GPT.from_pretrained(out)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_gpt_neo_style_mingpt_model_exports_a_pattern_that_does_not_divide_the_layers(tmp_path):
    """("global", "local", "local") tiled over 4 layers is attention_types
    [[["global", "local", "local"], 1], [["global"], 1]]; untied heads go along as their own tensor."""
    model = perturbed(tiny_gpt(vocab_size=VOCAB, block_size=T, n_layer=4))
    config = GPT.get_default_config()
    config.merge_from_dict({**model.config.to_dict(), "attention_pattern": ("global", "local", "local"),
                            "window_size": 3, "attention_scale": 1.0, "qkv_bias": False, "tie_embeddings": False})
    neo_style = perturbed(GPT(config))
    out = neo_style.save_pretrained(tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert written["attention_types"] == [[["global", "local", "local"], 1], [["global"], 1]]
    assert written["window_size"] == 3 and written["tie_word_embeddings"] is False
    reloaded = transformers.GPTNeoForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert ulps_from(neo_style, reloaded, torch.randint(VOCAB, (2, T))) <= ULPS_FORWARD
    assert GPT.from_pretrained(out).config.attention_pattern == ("global", "local", "local")


def save_bare_with_mask_buffers(hf_model, folder, buffers):
    """The layout of the first uploads: the bare model's names (no "transformer." prefix, no
    lm_head) in a pytorch_model.bin, with the mask buffers that were saved then."""
    folder.mkdir()
    hf_model.config.save_pretrained(folder)
    state = dict(hf_model.transformer.state_dict())
    for i in range(hf_model.config.num_hidden_layers):
        state.update({name.format(i=i): value for name, value in buffers.items()})
    torch.save(state, folder / "pytorch_model.bin")


def test_old_checkpoints_mask_buffers_are_ignored(tmp_path, neo, gpt1):
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
    neo_model, gpt1_model = neo[0], gpt1[0]
    save_bare_with_mask_buffers(neo_model, tmp_path / "neo", {
        "h.{i}.attn.attention.bias": mask, "h.{i}.attn.attention.masked_bias": torch.tensor(-1e9)})
    save_bare_with_mask_buffers(gpt1_model, tmp_path / "gpt1", {"h.{i}.attn.bias": mask.float()})
    state = torch.load(tmp_path / "gpt1" / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "position_ids": torch.arange(T)}, tmp_path / "gpt1" / "pytorch_model.bin")
    idx = torch.randint(VOCAB, (2, T))
    for name, hf_model in (("neo", neo_model), ("gpt1", gpt1_model)):
        model = GPT.from_pretrained(tmp_path / name).eval()
        assert ulps_from(model, hf_model, idx) <= ULPS_FORWARD, name


def write_config(folder, tmp_path, **changes):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


@pytest.mark.parametrize("family, change, message", [
    ("neo", {"intermediate_size": 64}, "intermediate_size is 64, not 4 * hidden_size = 128"),
    ("neo", {"activation_function": "relu"}, "activation_function 'relu' is not the tanh GELU"),
    ("neo", {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06, not 1e-5"),
    ("neo", {"attention_types": [[["global", "sparse"], 2]]}, "attention type 'sparse' in attention_types "
                                                              "is not one of 'global', 'local'"),
    ("neo", {"attention_types": [[["global", "local"], 1]]}, "attention_types describe 2 layers but "
                                                             "num_layers is 4"),
    ("neo", {"attention_types": "global"}, "attention_types is 'global', not a list of"),
    ("neo", {"attention_types": [["global", 4]]}, "attention_types entry ['global', 4] is not"),
    ("neo", {"window_size": 0}, "window_size is 0, not a positive integer"),
    ("gpt1", {"afn": "relu"}, "afn is 'relu', not 'gelu'"),
    ("gpt1", {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06, not 1e-5"),
])
def test_variants_mingpt_cannot_run_exactly_are_refused_in_one_line(tmp_path, neo, gpt1, family, change, message):
    folder = write_config((neo if family == "neo" else gpt1)[1], tmp_path, **change)
    with pytest.raises(ValueError) as e:
        GPT.from_pretrained(folder)
    text = str(e.value)
    assert message in text and "\n" not in text
    assert text.startswith(str(folder / "config.json")) and "mingpt only runs " in text


def test_save_picks_the_family_that_describes_the_model(tmp_path):
    def model(**parts):
        config = GPT.get_default_config()
        config.merge_from_dict({"n_layer": 2, "n_head": 2, "n_embd": 16, "vocab_size": VOCAB,
                                "block_size": T, **parts})
        return GPT(config)

    def saved_as(model, name):
        return json.loads((model.save_pretrained(tmp_path / name) / "config.json").read_text())["model_type"]

    assert saved_as(model(), "a") == "gpt2"
    assert saved_as(model(norm_position="post"), "b") == "openai-gpt"
    assert saved_as(model(attention_pattern=("local",), attention_scale=1.0, qkv_bias=False), "c") == "gpt_neo"


@pytest.mark.parametrize("parts, lacks", [
    # GPT-3: scaled attention and local layers
    ({"attention_pattern": ("global", "local")}, "GPT-Neo: attention_scale=None, not 1.0"),
    # GPT-1 with exact GELU: transformers' openai-gpt has only the tanh one
    ({"norm_position": "post", "activation": "gelu"}, "GPT-1 (openai-gpt): activation='gelu', not 'gelu_tanh'"),
])
def test_a_model_no_family_describes_is_refused_before_anything_is_written(tmp_path, parts, lacks):
    config = GPT.get_default_config()
    config.merge_from_dict({"n_layer": 2, "n_head": 2, "n_embd": 16, "vocab_size": VOCAB, "block_size": T, **parts})
    with pytest.raises(ValueError) as e:
        GPT(config).save_pretrained(tmp_path / "export")
    text = str(e.value)
    assert "none of them has this model" in text and lacks in text and "\n" not in text
    assert "save it as a mingpt checkpoint instead" in text
    assert not (tmp_path / "export").exists()


# -- tokenizers and `mingpt sample` ---------------------------------------------------------------
# a GPT-1-style BPE of 25 tokens: lower-cased words, "</w>" ending each word
TINY_GPT1_VOCAB = ["<unk>", "h", "e", "l", "o", "w", "r", "d", "h</w>", "e</w>", "l</w>", "o</w>", "w</w>",
                   "r</w>", "d</w>", "he", "ll", "hell", "hello</w>", "wor", "world</w>", ",</w>", ".</w>",
                   "wo", "ld</w>"]
TINY_GPT1_MERGES = ["h e", "l l", "he ll", "hell o</w>", "w o", "wo r", "l d</w>", "wor ld</w>"]


def with_gpt1_tokenizer(folder, tmp_path):
    copy = tmp_path / "gpt1"
    shutil.copytree(folder, copy)
    (copy / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(TINY_GPT1_VOCAB)}))
    (copy / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_GPT1_MERGES) + "\n")
    return copy


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: every download fails as a dead one does (and no local folder has a hub name)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.chdir(tmp_path)
    calls = []

    def dead(repo_id, **kwargs):
        calls.append(repo_id)
        raise OSError("Connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", dead)
    return calls


def test_gpt_neo_and_gpt2_use_mingpts_own_bpe_without_any_download(neo, offline):
    assert isinstance(pretrained.tokenizer_for(neo[1]), BPETokenizer)
    for name in ("EleutherAI/gpt-neo-125m", "gpt2-xl"):
        assert isinstance(pretrained.tokenizer_for(name), BPETokenizer)
    assert offline == []


def test_gpt1s_tokenizer_comes_from_transformers_and_its_folders_files(gpt1, tmp_path):
    tok = pretrained.tokenizer_for(with_gpt1_tokenizer(gpt1[1], tmp_path))
    ids = tok.encode("Hello, world.")
    assert ids == [18, 21, 20, 22] and tok.decode(ids) == "hello , world ."
    assert tok.vocab_size == 25 and tok.eot_token is None
    with pytest.raises(ValueError, match="no token that starts a document"):
        tokenizers.start_ids(tok, "")


def test_gpt1s_missing_tokenizer_files_are_named_with_how_to_get_them(gpt1, offline):
    with pytest.raises(FileNotFoundError) as e:
        pretrained.tokenizer_for(gpt1[1])
    text = str(e.value)
    assert "not its tokenizer's vocab.json and merges.txt" in text and "\n" not in text
    assert "hf download openai-community/openai-gpt vocab.json merges.txt" in text
    with pytest.raises(FileNotFoundError, match=r"could not download 'openai-gpt' \(openai-community/openai-gpt\)"):
        pretrained.tokenizer_for("openai-gpt")  # the hub name: its files would be downloaded


def test_text_stream_pieces_add_up_to_the_decoded_text(gpt1, tmp_path):
    tok = pretrained.tokenizer_for(with_gpt1_tokenizer(gpt1[1], tmp_path))
    prompt, new = tok.encode("hello"), tok.encode("world, he hello.")
    stream = tokenizers.TextStream(tok, prompt)
    pieces = [stream.add([i]) for i in new] + [stream.end()]
    assert "".join(pieces) == " world , he hello ."


def sample(capsys, *args):
    status = run_job("sample", list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_sample_runs_a_hugging_face_gpt_neo_folder_with_gpt2s_tokenizer(tmp_path, capsys):
    torch.manual_seed(2)  # a GPT-Neo over GPT-2's whole vocabulary
    hf_model = hf_neo(vocab_size=50257, hidden_size=16)
    hf_model.save_pretrained(tmp_path / "neo")
    status, out, err = sample(capsys, f"--model={tmp_path / 'neo'}", "--prompt=Hello", "--max_new_tokens=12",
                              "--do_sample=False", "--system.device=cpu")
    assert status == 0, err
    tok = BPETokenizer()
    prompt = torch.tensor([tok.encode("Hello")])
    new = hf_greedy(hf_model, prompt, 12)[0, prompt.size(1):].tolist()
    assert out == "Hello" + tok.decode(new) + "\n"


def test_sample_runs_a_hugging_face_gpt1_folder_with_its_own_tokenizer(tmp_path, capsys):
    torch.manual_seed(3)  # a GPT-1 over the tiny tokenizer's 25 tokens
    hf_model = hf_gpt1(vocab_size=len(TINY_GPT1_VOCAB))
    hf_model.save_pretrained(tmp_path / "hf")
    folder = with_gpt1_tokenizer(tmp_path / "hf", tmp_path)
    status, out, err = sample(capsys, f"--model={folder}", "--prompt=Hello world", "--max_new_tokens=6",
                              "--do_sample=False", "--system.device=cpu")
    assert status == 0, err
    tok = pretrained.tokenizer_for(folder)
    prompt = torch.tensor([tok.encode("Hello world")])
    ids = hf_greedy(hf_model, prompt, 6)[0].tolist()
    assert out == "Hello world" + tok.decode(ids)[len("hello world"):] + "\n"
    status, out, err = sample(capsys, f"--model={folder}", "--system.device=cpu")
    assert status == 1 and "no token that starts a document" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["EleutherAI/gpt-neo-125m", "openai-gpt"])
def test_sample_of_a_hub_name_offline_fails_in_one_line(offline, capsys, name):
    status, out, err = sample(capsys, f"--model={name}", "--system.device=cpu")
    assert status == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"could not download {name!r}" in err and "connect to the internet" in err


def test_sample_refuses_a_tokenizer_larger_than_the_models_vocabulary(neo, capsys):
    status, out, err = sample(capsys, f"--model={neo[1]}", "--system.device=cpu")  # vocab 100 < GPT-2's
    assert status == 1 and "has 50257 tokens but the model knows only 100" in err


# -- fine-tuning a pretrained model ---------------------------------------------------------------
def fine_tune_config(tmp_path, init_from, **model):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / tokenizers.SPEC_FILE).write_text(json.dumps({"type": "bpe", "name": "gpt2"}))  # GPT-2's BPE
    config = train_config()
    config.init_from, config.data.dir = str(init_from), str(data)
    config.model.block_size = T
    config.model.merge_from_dict(model)
    return config


@pytest.mark.parametrize("model, message", [
    ({"attention_pattern": "global"}, "model.attention_pattern='global' differs from the ('global', 'local') "
                                      "that"),
    ({"window_size": 8}, "model.window_size=8 differs from the 4 that"),
])
def test_fine_tuning_refuses_another_attention_than_the_pretrained_models(tmp_path, neo, model, message):
    with pytest.raises(ValueError) as e:
        build_model(fine_tune_config(tmp_path, neo[1], **model), VOCAB)
    assert message in str(e.value) and "leave model." in str(e.value) and "\n" not in str(e.value)


def test_fine_tuning_accepts_the_models_own_attention_written_out(tmp_path, neo):
    config = fine_tune_config(tmp_path, neo[1], attention_pattern="global,local,global,local", window_size=WINDOW)
    assert build_model(config, VOCAB).config.attention_pattern == ("global", "local")


def test_fine_tuning_gpt1_is_refused_as_its_tokenizer_cannot_be_prepared(tmp_path, gpt1):
    with pytest.raises(ValueError, match="reads openai-gpt's own tokenizer, which `mingpt prepare` does not make"):
        build_model(fine_tune_config(tmp_path, gpt1[1]), VOCAB)
