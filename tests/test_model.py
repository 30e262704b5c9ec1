"""The GPT model: GPT-2's architecture, its shapes and errors, generation with a KV cache."""
import math

import pytest
import torch

from helpers import ULPS_FORWARD, ULPS_OP, assert_close_to, tiny_gpt, ulps_apart
from mingpt.model import GPT
from mingpt.nn.generate import choose_next
from mingpt.utils import CfgNode


def test_changing_a_future_token_never_changes_a_past_logit():
    model = tiny_gpt().eval()
    idx = torch.randint(11, (2, 16))
    logits, _ = model(idx)
    for t in range(15):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 11
        changed_logits, _ = model(changed)
        assert_close_to(logits[:, :t + 1], changed_logits[:, :t + 1], ULPS_OP)
        assert ulps_apart(logits[:, t + 1:], changed_logits[:, t + 1:]) > 100 * ULPS_FORWARD


def test_generate_with_cache_matches_full_recompute():
    model = tiny_gpt(block_size=16).eval()
    prompt = torch.randint(11, (3, 5))
    # 30 new tokens: past block_size, so the cropped-context path is exercised too
    with_cache = model.generate(prompt, 30, use_cache=True)
    without_cache = model.generate(prompt, 30, use_cache=False)
    assert with_cache.shape == (3, 35)
    assert torch.equal(with_cache, without_cache)


def test_generate_with_cache_matches_step_by_step_forward():
    model = tiny_gpt(block_size=16).eval()
    idx = torch.randint(11, (1, 4))
    expected = idx
    for _ in range(12):
        logits, _ = model(expected[:, -16:])
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(idx, 12), expected)


def test_generate_stream_yields_the_same_tokens_one_at_a_time():
    model = tiny_gpt().eval()
    prompt = torch.randint(11, (2, 3))
    pieces = list(model.generate_stream(prompt, 8))
    assert len(pieces) == 8 and all(p.shape == (2, 1) for p in pieces)
    assert torch.equal(torch.cat([prompt, *pieces], dim=1), model.generate(prompt, 8))


def test_sampling_is_reproducible_and_respects_top_k():
    model = tiny_gpt().eval()
    prompt = torch.zeros(64, 1, dtype=torch.long)
    torch.manual_seed(1)
    a = model.generate(prompt, 1, do_sample=True, top_k=2)
    torch.manual_seed(1)
    b = model.generate(prompt, 1, do_sample=True, top_k=2)
    assert torch.equal(a, b)
    logits, _ = model(prompt[:1])
    top2 = set(torch.topk(logits[0, -1], 2).indices.tolist())
    assert set(a[:, -1].tolist()) <= top2


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    picks = {choose_next(logits, 1.0, True, None, 0.7).item() for _ in range(200)}
    assert picks == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: tokens 2 and 3 are cut
    picks = {choose_next(logits, 1.0, True, None, 0.4).item() for _ in range(50)}
    assert picks == {0}


def test_loss_at_init_is_near_log_vocab_size():
    model = tiny_gpt(vocab_size=65, block_size=32)
    idx, targets = torch.randint(65, (2, 8, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(65)) < 0.1


def test_targets_of_minus_one_are_ignored():
    model = tiny_gpt()
    idx = torch.randint(11, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 11), idx[:, 4:].reshape(-1))
    assert_close_to(expected, loss, ULPS_OP)


def test_overfits_one_small_batch():
    model = tiny_gpt(vocab_size=20, block_size=12)
    x = torch.randint(20, (4, 12))
    y = torch.randint(20, (4, 12))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("model_type, expected", [
    ("gpt2", 124_439_808),
    ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200),
])
def test_gpt2_presets_have_gpt2_parameter_counts(model_type, expected):
    config = GPT.get_default_config()
    config.model_type, config.vocab_size, config.block_size = model_type, 50257, 1024
    config.tie_embeddings = True  # GPT-2's head is its token embedding
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(config)
    assert model.num_params() == expected


def test_explicit_dimensions_override_the_preset():
    config = GPT.get_default_config()
    config.model_type, config.n_layer = "gpt-micro", 2
    config.vocab_size, config.block_size = 10, 8
    model = GPT(config)
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (2, 4, 128)
    assert len(model.transformer.h) == 2


def test_head_is_tied_to_token_embedding_and_init_follows_gpt2():
    model = tiny_gpt(n_layer=8, n_embd=256, n_head=4, vocab_size=500)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    expected = 0.02 / math.sqrt(2 * 8)
    assert abs(model.transformer.h[0].attn.c_proj.weight.std().item() - expected) < 0.0005
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)
    gelu = model.transformer.h[0].mlp.act
    assert gelu.approximate == "tanh"


def test_configure_optimizers_decays_only_matmul_weights():
    model = tiny_gpt()
    optimizer = model.configure_optimizers(CfgNode(learning_rate=1e-3, betas=(0.9, 0.95), weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert names == {n for n, _ in model.named_parameters()
                     if n.endswith("weight") and ("c_attn" in n or "c_proj" in n or "c_fc" in n)}
    total = len(decay["params"]) + len(no_decay["params"])
    assert total == len(list(model.parameters()))  # every parameter exactly once


@pytest.mark.parametrize("change, message", [
    ({"n_embd": 30, "n_head": 4}, "n_embd=30 must be divisible by n_head=4"),
    ({"vocab_size": None}, "model.vocab_size must be a positive integer"),
    ({"model_type": "gpt5"}, "unknown model_type 'gpt5'"),
    ({"n_layer": None}, "model.n_layer must be a positive integer (or choose a model_type)"),
])
def test_bad_model_configs_are_refused_with_a_clear_message(change, message):
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.block_size = 2, 2, 32, 10, 8
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ValueError) as e:
        GPT(config)
    assert message in str(e.value)


def test_wrong_input_shapes_get_clear_errors():
    model = tiny_gpt(block_size=8)
    with pytest.raises(ValueError, match="exceeds block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, time\) LongTensor"):
        model(torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_crop_block_size_keeps_the_first_positions_and_the_outputs():
    model = tiny_gpt(block_size=16).eval()
    idx = torch.randint(11, (2, 8))
    before, _ = model(idx)
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model.transformer.wpe.weight.shape[0] == 8
    assert torch.equal(model(idx)[0], before)
    with pytest.raises(ValueError, match="exceeds block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
