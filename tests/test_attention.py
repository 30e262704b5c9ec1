"""Local (banded) attention, GPT-3's alternating pattern, and the ring KV cache of local layers:
exact against a float64 masked reference and a brute-force loop, forward and gradients."""
import json
import math
import warnings

import pytest
import torch
from torch.nn import functional as F

from helpers import ULPS_FORWARD, ULPS_OP, assert_close_to, ulps_apart
from mingpt.model import GPT
from mingpt.nn import layers
from mingpt.nn.cache import KVCache
from mingpt.nn.kernels.banded import _flex_banded, band_mask, banded_attention, banded_reference


def loop_reference(q, k, v, window, scale=None):
    """Query by query, key by key: the definition, query i sees keys i - window + 1 .. i."""
    B, H, T, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = torch.zeros_like(q)
    for i in range(T):
        seen = range(max(0, i - window + 1), i + 1)
        scores = torch.stack([(q[:, :, i] * k[:, :, j]).sum(-1) * scale for j in seen], dim=-1)
        weights = scores.softmax(dim=-1)
        out[:, :, i] = sum(weights[..., n, None] * v[:, :, j] for n, j in enumerate(seen))
    return out


def qkv(T, seed=0, B=2, H=3, D=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3)]


CASES = [(w, T) for w in (2, 4, 7, 16) for T in sorted({1, w - 1, w, w + 1, 3 * w + 5}) if T >= 1] + [(1, 1), (1, 9)]


@pytest.mark.parametrize("window,T", CASES)
def test_banded_attention_equals_the_masked_reference_and_the_loop_forward_and_backward(window, T):
    q, k, v = qkv(T)
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(T, window))
    looped = loop_reference(q, k, v, window)
    fast = banded_attention(q, k, v, window)
    assert_close_to(looped, masked, ULPS_OP)  # (float64)
    assert_close_to(masked, fast, ULPS_OP)
    grad_out = torch.randn_like(fast)
    want = torch.autograd.grad(looped, (q, k, v), grad_out)
    for got in (torch.autograd.grad(fast, (q, k, v), grad_out),
                torch.autograd.grad(banded_reference(q, k, v, window), (q, k, v), grad_out)):
        # (the gradients together: one of them may be exactly 0, a key that a lone query cannot but see)
        assert_close_to(flat(want), flat(got), ULPS_OP)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


@pytest.mark.parametrize("T", [5, 40])
def test_a_window_as_long_as_the_sequence_is_dense_causal_attention_exactly(T):
    q, k, v = qkv(T, B=1)
    dense = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(banded_attention(q, k, v, window=T), dense)
    assert torch.equal(banded_attention(q, k, v, window=T + 100), dense)
    assert ulps_apart(dense, banded_attention(q, k, v, window=T - 1)) > 1e6  # (the band really cuts)


def test_banded_attention_in_float32_with_a_scale_and_strided_inputs():
    # the layout the model hands over: (B, T, H, D) transposed to (B, H, T, D), not contiguous
    q, k, v = (torch.randn(2, 301, 4, 16).transpose(1, 2).requires_grad_() for _ in range(3))
    fast = banded_attention(q, k, v, 64, scale=0.5)
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(301, 64), scale=0.5)
    assert_close_to(masked, fast, ULPS_OP)
    grad_out = torch.randn_like(fast)
    assert_close_to(flat(torch.autograd.grad(masked, (q, k, v), grad_out)),
                    flat(torch.autograd.grad(fast, (q, k, v), grad_out)), ULPS_OP)


def test_the_flex_attention_band_used_on_cuda_is_the_same_band():
    q, k, v = (t.detach() for t in qkv(37))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(37, 8))
    with pytest.warns(UserWarning, match="torch.compile"):  # eager FlexAttention on the CPU: the reference path
        got = _flex_banded(q, k, v, 8, None, compiled=False)
    assert_close_to(want, got, ULPS_OP)


def test_attention_dropout_in_a_local_layer_never_reaches_outside_the_band():
    q, k, v = qkv(30)
    out = banded_attention(q, k, v, 4, dropout_p=0.5)
    grad_k, = torch.autograd.grad(out[:, :, 20].sum(), (k,))  # query 20 may see keys 17 .. 20
    seen = grad_k.abs().sum(dim=(0, 1, 3)) > 0
    assert seen[17:21].any() and not seen[:17].any() and not seen[21:].any()


def gpt(pattern, window=4, block_size=40, n_layer=3, **kw):
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd = n_layer, 2, 16
    config.vocab_size, config.block_size = 11, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    config.attention_pattern, config.window_size = pattern, window
    for key, value in kw.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return GPT(config).eval()


def test_layers_attend_as_the_pattern_tiled_over_them_says():
    model = gpt(("global", "local"), n_layer=5)
    kinds = [type(b.attn.attend).__name__ for b in model.transformer.h]
    assert kinds == ["GlobalAttention", "LocalAttention"] * 2 + ["GlobalAttention"]
    assert model.config.window_size == 4


def test_a_local_model_differs_from_the_global_one_until_its_window_covers_the_context():
    idx = torch.randint(0, 11, (2, 30))
    global_logits, _ = gpt(("global",))(idx)
    local_logits, _ = gpt(("global", "local"), window=4)(idx)
    wide_logits, _ = gpt(("global", "local"), window=30)(idx)  # the same weights (same seed)
    assert torch.equal(wide_logits, global_logits)
    assert ulps_apart(global_logits, local_logits) > 100 * ULPS_FORWARD  # far more than rounding
    assert_close_to(global_logits[:, :4], local_logits[:, :4], ULPS_FORWARD)  # the first window agrees


@pytest.mark.parametrize("pattern", [("global", "local"), ("local",)])
@pytest.mark.parametrize("prompt", [3, 12])
def test_greedy_generation_with_the_ring_cache_equals_recomputation_past_the_window_and_block_size(pattern, prompt):
    model = gpt(pattern, window=5, block_size=24)
    idx = torch.randint(0, 11, (2, prompt), generator=torch.Generator().manual_seed(prompt))
    with_cache = model.generate(idx, 40, use_cache=True)  # past the window and past block_size
    assert torch.equal(with_cache, model.generate(idx, 40, use_cache=False))


def test_a_local_layer_caches_only_its_window():
    cache = KVCache(n_layer=2, batch_size=1, n_head=2, max_len=2048, head_dim=8, device="cpu",
                    dtype=torch.float32, windows=[None, 256])
    assert cache.keys[0].shape[2] == 2048 and cache.keys[1].shape[2] == 256
    assert cache.nbytes() == 2 * 1 * 2 * 8 * 4 * (2048 + 256)
    k = torch.randn(1, 2, 300, 8)
    keys, _, mask = cache.update(1, k, k)
    assert keys.shape[2] == 300 and mask is None  # a prompt attends over itself (causally) ...
    cache.length = 300
    keys, _, _ = cache.update(1, k[:, :, :1], k[:, :, :1])
    assert keys.shape[2] == 256  # ... a new token over the window
    with pytest.raises(ValueError, match="prompt first"):
        cache.update(1, k[:, :, :2], k[:, :, :2])


def test_gpt3_presets_have_the_papers_shapes_and_175b_builds_on_the_meta_device():
    config = GPT.get_default_config()
    config.model_type, config.vocab_size, config.tie_embeddings = "gpt3-175b", 50257, True
    with torch.device("meta"):
        model = GPT(config)
    assert model.config.block_size == 2048 and model.config.window_size == 256
    assert model.config.attention_pattern == ("global", "local")
    assert 174e9 < model.num_params() < 176e9
    config.model_type = "gpt3-small"
    small = GPT(config)
    assert 124e6 < small.num_params() < 126e6
    assert small.flops_per_token() < GPT(_all_global(config)).flops_per_token()  # local layers see 256


def _all_global(config):
    config = GPT.get_default_config().__class__(**config.to_dict())
    config.attention_pattern = ("global",)
    return config


def test_gpt1_preset_is_post_norm_with_no_final_norm_and_exports_as_openai_gpt(tmp_path):
    config = GPT.get_default_config()
    config.model_type, config.vocab_size = "gpt1", 40478
    model = GPT(config)
    assert model.config.block_size == 512 and model.config.norm_position == "post"
    assert type(model.transformer.h[0]).__name__ == "PostNormBlock"
    assert not any(name.startswith("transformer.ln_f") for name in model.state_dict())
    assert model.transformer.h[0].mlp.act.approximate == "tanh"  # transformers runs GPT-1's "gelu" so
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "openai-gpt"


def test_the_pattern_from_the_command_line_is_a_comma_separated_list():
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.block_size = 2, 2, 16, 11, 8
    config.merge_from_args(["--attention_pattern=global,local", "--window_size=3"])
    assert GPT(config).config.attention_pattern == ("global", "local")


@pytest.mark.parametrize("change,message", [
    (dict(window_size=0), r"model.window_size=0 must be >= 1"),
    (dict(window_size=2.5), r"model.window_size must be of type int, got 2.5"),
    (dict(attention_pattern=("global", "sparse")), r"attention_pattern=\('global', 'sparse'\) must be a non-empty tuple of 'global', 'local'"),
    (dict(attention_pattern=()), r"must be a non-empty tuple"),
    (dict(norm_position="middle"), r"model.norm_position='middle' must be one of 'pre', 'post'"),
    (dict(attention_scale=0.0), r"model.attention_scale=0.0 must be > 0"),
])
def test_bad_attention_settings_are_refused_in_one_line(change, message):
    config = gpt(("global",)).config
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        GPT(config)


def test_a_local_model_trains_and_its_pattern_comes_back_from_the_checkpoint(tmp_path):
    from helpers import pattern_stream, quick_config

    from mingpt.trainer import Trainer
    model = gpt(("local", "global"), window=3, block_size=16, n_layer=2)
    model.train()
    trainer = Trainer(quick_config(max_iters=20), model, pattern_stream(), work_dir=tmp_path)
    trainer.run()
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.config.attention_pattern == ("local", "global") and loaded.config.window_size == 3
    idx = torch.randint(0, 7, (1, 16))
    assert torch.equal(loaded.eval()(idx)[0], model.eval()(idx)[0])


# -- bf16 training on the CPU -------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", [("global",), ("local",)])
def test_bf16_training_on_the_cpu_attends_in_fp32_and_inference_in_bf16(monkeypatch, pattern):
    """In a bf16 training forward each layer's attention gets fp32 copies of q, k, v (the fused CPU
    kernel's bf16 backward is slow) and hands back bf16; without gradients it stays bf16. Loss and
    gradients stay close to fp32's, and the RMSNorm of QK-norm takes bf16 queries without a warning."""
    seen = []
    kind = layers.ATTENTIONS[pattern[0]]
    compute = kind.compute
    monkeypatch.setattr(kind, "compute", lambda self, q, k, v, mask: seen.append(q.dtype) or compute(self, q, k, v, mask))
    config = GPT.get_default_config()
    config.merge_from_dict(dict(model_type=None, n_layer=2, n_head=2, n_embd=32, vocab_size=11, block_size=16,
                                attention_pattern=pattern, window_size=4, norm="rmsnorm", qk_norm=True,
                                position_encoding="rope", embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0))
    torch.manual_seed(0)
    model = GPT(config)
    x = torch.randint(0, 11, (3, 16))
    _, fp32_loss = model(x, x)
    fp32_grads = torch.autograd.grad(fp32_loss, list(model.parameters()))
    seen.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (PyTorch warns of an fp32 gain on bf16 input)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, x)
            grads = torch.autograd.grad(loss, list(model.parameters()))
            assert seen == [torch.float32] * 2
            seen.clear()
            with torch.no_grad():
                model(x, x)
            assert seen == [torch.bfloat16] * 2
    assert loss.item() != fp32_loss.item()
    assert_close_to(fp32_loss, loss, 4, dtype=torch.bfloat16)  # bf16's products: a few of its ulps
    for ours, theirs in zip(grads, fp32_grads):
        assert_close_to(theirs, ours, ULPS_OP, dtype=torch.bfloat16)
