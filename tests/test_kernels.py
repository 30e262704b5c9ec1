"""The CPU kernels (mingpt/nn/kernels/): where CPULinear takes oneDNN's kernels or sliced weights it
computes what nn.Linear computes, and the seam applies them only where asked."""
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import ULPS_OP, assert_close_to, pattern_stream, quick_config, tiny_gpt, ulps_of_sums
from mingpt.nn.kernels import CPUKernels, CPULinear, decoding, kernels_of, linear, use_cpu_kernels, use_plain_kernels
from mingpt.trainer import Trainer

DEFAULTS = CPUKernels()
pytestmark = pytest.mark.skipif(not linear.ONEDNN, reason="this PyTorch build has no oneDNN (mkldnn)")


@pytest.fixture
def onednn_calls(monkeypatch):
    """A list that gets one entry per oneDNN product."""
    calls = []
    kernel = linear.onednn_linear
    monkeypatch.setattr(linear, "onednn_linear", lambda *args: calls.append(1) or kernel(*args))
    return calls


def cpu_linear(d_in: int, d_out: int) -> CPULinear:
    layer = nn.Linear(d_in, d_out)
    use_cpu_kernels(layer)
    assert type(layer) is CPULinear
    return layer


def gradients(layer: torch.nn.Linear, x: torch.Tensor, grad_y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.backward(grad_y)
    return y, x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize("shape", [(256, 512, 1024), (32, 1024, 4100)],
                         ids=["oneDNN input gradient", "weight too big to transpose: BLAS input gradient"])
def test_large_products_take_onednn_and_match_nn_linear(shape, onednn_calls):
    rows, d_in, d_out = shape  # rows x weights >= 2**27: the large-product path
    torch.manual_seed(0)
    layer = cpu_linear(d_in, d_out)
    x, grad_y = torch.randn(2, rows // 2, d_in), torch.randn(2, rows // 2, d_out)
    fast = gradients(layer, x, grad_y)
    input_grad_on_onednn = layer.weight.numel() <= DEFAULTS.transpose_max_weights
    assert len(onednn_calls) == 1 + input_grad_on_onednn
    plain = torch.nn.Linear(d_in, d_out)
    plain.load_state_dict(layer.state_dict())
    expected = gradients(plain, x, grad_y)
    assert len(onednn_calls) == 1 + input_grad_on_onednn  # nn.Linear never takes it
    for got, want in zip(fast, expected):  # y, x's, W's and b's gradients: sums of d_in, d_out, rows, rows terms
        assert got.shape == want.shape
        assert_close_to(want, got, ulps_of_sums(max(d_in, d_out, rows)))
    with torch.no_grad():  # evaluation at the same size: oneDNN without the autograd Function
        assert_close_to(expected[0], layer(x), ulps_of_sums(d_in))
    assert len(onednn_calls) == 2 + input_grad_on_onednn


def test_small_products_autocast_and_frozen_inputs(onednn_calls):
    small = cpu_linear(64, 64)
    small(torch.randn(8, 64, requires_grad=True)).sum().backward()
    assert onednn_calls == []  # 8 x 4096: too small to pay
    large = cpu_linear(512, 1024)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert large(torch.randn(256, 512)).dtype == torch.bfloat16  # autocast keeps its own kernels
    assert onednn_calls == []
    for p in large.parameters():
        p.requires_grad_(False)
    large(torch.randn(256, 512))  # nothing needs a gradient: the plain oneDNN product
    assert len(onednn_calls) == 1


def test_settings_are_values_given_to_the_model_and_can_be_taken_back(onednn_calls):
    model = tiny_gpt(n_layer=1, n_embd=512, n_head=2)
    assert kernels_of(model) is None and not any(type(m) is CPULinear for m in model.modules())
    names = [n for n, _ in model.named_parameters()]
    use_cpu_kernels(model, CPUKernels(onednn=False))
    assert kernels_of(model) == CPUKernels(onednn=False)
    assert [n for n, _ in model.named_parameters()] == names  # the same module, parameters and names
    c_fc = model.transformer.h[0].mlp.c_fc
    c_fc(torch.randn(256, 512))  # a large product, but this model's settings say no oneDNN
    assert onednn_calls == []
    use_cpu_kernels(model)  # the defaults
    c_fc(torch.randn(256, 512))
    assert len(onednn_calls) == 1
    use_plain_kernels(model)
    assert type(c_fc) is nn.Linear and kernels_of(model) is None
    c_fc(torch.randn(256, 512))
    assert len(onednn_calls) == 1


def test_the_trainer_applies_them_on_the_cpu_for_the_run_and_gives_the_model_back_as_it_was_given():
    model = tiny_gpt(vocab_size=7)
    classes = [type(m) for m in model.modules()]
    during = []
    trainer = Trainer(quick_config(max_iters=2), model, pattern_stream())
    trainer.add_callback("on_batch_end", lambda t: during.append(kernels_of(t.model)))
    trainer.run()
    assert during == [DEFAULTS, DEFAULTS]  # the run trained with them
    assert kernels_of(model) is None and [type(m) for m in model.modules()] == classes  # its own classes back
    own = CPUKernels(large_product=2**20)  # a model with kernels of its own keeps them, during and after
    use_cpu_kernels(model, own)
    during.clear()
    trainer = Trainer(quick_config(max_iters=2), model, pattern_stream())
    trainer.add_callback("on_batch_end", lambda t: during.append(kernels_of(t.model)))
    trainer.run()
    assert during == [own, own] and kernels_of(model) == own


def test_generate_gives_the_model_back_as_it_was_given():
    model = tiny_gpt(vocab_size=7, block_size=64).eval()
    classes = [type(m) for m in model.modules()]
    model.generate(torch.zeros(1, 1, dtype=torch.long), DEFAULTS.slice_min_steps)  # (decoding's kernels inside)
    assert kernels_of(model) is None and [type(m) for m in model.modules()] == classes


def test_decoding_kernels_agree_with_the_default_blas(monkeypatch, onednn_calls):
    model = tiny_gpt(n_layer=2, n_head=2, n_embd=192, block_size=64).eval()  # c_fc: 147K weights
    prompt = torch.randint(11, (2, 3))
    c_fc = model.transformer.h[0].mlp.c_fc
    x = torch.randn(2, 1, 192)
    expected = F.linear(x, c_fc.weight, c_fc.bias)
    with torch.no_grad():
        use_cpu_kernels(model)
        assert_close_to(expected, c_fc(x), ULPS_OP)  # 2 rows, 147K weights: oneDNN
        assert onednn_calls == [1]
        with decoding(model, steps=5):
            assert c_fc.sliced_weight is None  # too few steps to pay for the copies
        with decoding(model, steps=DEFAULTS.slice_min_steps):
            slices = math.gcd(torch.get_num_threads(), 192)
            assert c_fc.sliced_weight[1].shape == (slices, 192 // slices, 768)
            assert model.transformer.h[0].attn.c_proj.sliced_weight is None  # 37K weights: too few
            assert_close_to(expected, c_fc(x), ULPS_OP)  # the sliced product
            assert onednn_calls == [1]
            assert c_fc(torch.randn(5, 192)).shape == (5, 768) and len(onednn_calls) == 2  # 5 rows: oneDNN
            c_fc.weight.mul_(2)  # a weight changed inside the block: its copy is stale, not used
            assert_close_to(F.linear(x, c_fc.weight, c_fc.bias), c_fc(x), ULPS_OP)
            assert len(onednn_calls) == 3
        assert c_fc.sliced_weight is None
    use_plain_kernels(model)
    steps = DEFAULTS.slice_min_steps
    sliced_calls = []
    kernel = linear.sliced_product
    monkeypatch.setattr(linear, "sliced_product", lambda *args: sliced_calls.append(1) or kernel(*args))
    tokens = model.generate(prompt, steps)  # a plain model: generate applies the kernels for itself
    # the c_fc and MLP c_proj of 2 layers, at every step after the prompt's (6 rows: oneDNN)
    assert len(sliced_calls) == 4 * (steps - 1)
    assert kernels_of(model) is None  # and takes them back
    use_cpu_kernels(model, CPUKernels(sliced_decoding=False))
    assert torch.equal(model.generate(prompt, steps), tokens)  # oneDNN's matrix-vector kernel
    use_cpu_kernels(model, CPUKernels(onednn=False, sliced_decoding=False))
    assert torch.equal(model.generate(prompt, steps), tokens)  # the default BLAS
    assert len(sliced_calls) == 4 * (steps - 1)


def test_decoding_copies_nothing_past_its_memory_cap():
    model = tiny_gpt(n_layer=2, n_head=2, n_embd=192, block_size=32).eval()
    use_cpu_kernels(model, dataclasses.replace(DEFAULTS, decode_max_copied=2**17))  # less than the two c_fc weights
    with decoding(model, steps=DEFAULTS.slice_min_steps):
        assert all(m.sliced_weight is None for m in model.modules() if isinstance(m, CPULinear))

