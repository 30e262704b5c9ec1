"""Faster matrix products for nn.Linear on the CPU, where they were measured faster.

PyTorch sends a float32 matmul on the CPU to its BLAS (MKL). On this project's 2-core AMD EPYC
two other routes beat it for the products a GPT makes (benchmarks/kernels.py, benchmarks/RESULTS.md):
- Large products (rows x weights from `large_product` multiply-adds: training or evaluating the
  6/6/384 model, GPT-2) go to oneDNN, which ships inside the same PyTorch build and generates
  kernels for the CPU it finds. It does the forward product and the input's gradient; the
  weight's gradient stays with the BLAS, which is faster at it.
- Decoding multiplies a few vectors by every weight matrix, so its time goes into reading the
  weights. Inside `decoding(model, steps)` each weight of `decode_min_weights` to
  `slice_max_weights` entries is kept transposed and cut into one slice of input rows per
  thread: one batched product, in which each thread streams its own contiguous slice, then a sum
  of the slices' results. Outside it (or for bigger weights, or 5 to 16 rows) decoding's products
  take oneDNN's matrix-vector kernel.
Small products keep nn.Linear's path: there oneDNN's fixed cost per call and the Python autograd
Function below cost more than they save. So do CUDA, other dtypes, autocast (which picks its own
precision) and torch.compile (which picks its own kernels). Results equal nn.Linear's up to float
rounding.

How a model gets them: `use_cpu_kernels(model, CPUKernels(...))` turns its nn.Linear modules into
CPULinear (the same module, parameters and state-dict names; only forward differs), and
`use_plain_kernels(model)` turns them back.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@dataclass(frozen=True)
class CPUKernels:
    """Which kernels CPULinear takes, and from which sizes (tuned on a 2-core AMD EPYC)."""
    onednn: bool = True  # oneDNN for large products and for decoding (where this PyTorch has it)
    sliced_decoding: bool = True  # decoding() prepares sliced weights (off: oneDNN's matrix-vector kernel)
    large_product: int = 2**27  # rows x weights from which oneDNN pays off with gradients
    transpose_max_weights: int = 2**22  # oneDNN copies a transposed weight: above this the BLAS wins
    decode_max_rows: int = 16  # "decoding": at most this many rows (batch x new positions)
    sliced_max_rows: int = 4  # the sliced product wins up to batch 4; oneDNN beyond
    decode_min_weights: int = 2**17  # smaller matrices: the BLAS's lower cost per call wins
    slice_max_weights: int = 2**22  # GPT-2's 38M-weight head: no faster sliced, and the costliest copy
    slice_min_steps: int = 32  # the copies cost about 5 decoding steps and save ~15-20% of each
    decode_max_copied: int = 2**28  # decoding() copies at most this many weights (1 GiB of float32)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias with oneDNN; weight is (out_features, in_features)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class CPULinear(nn.Linear):
    """nn.Linear that takes the faster kernels described above where they apply.

    Made only by use_cpu_kernels (from an nn.Linear), never constructed directly."""

    kernels: CPUKernels
    # set inside decoding(): (the weight's version when copied, the weight as (slices, in/slices, out))
    sliced_weight: tuple[int, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cpu and x.dtype == self.weight.dtype == torch.float32) or torch.is_autocast_enabled("cpu") \
                or torch.compiler.is_compiling():
            return super().forward(x)
        k = self.kernels
        onednn = k.onednn and ONEDNN
        rows = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if 1 <= rows <= k.decode_max_rows and not needs_grad:
            sliced = self.sliced_weight
            if sliced is not None and rows <= k.sliced_max_rows and sliced[0] == self.weight._version:
                return sliced_product(x, sliced[1], self.bias)
            if onednn and self.weight.numel() >= k.decode_min_weights:
                return onednn_linear(x, self.weight, self.bias)
        elif onednn and rows * self.weight.numel() >= k.large_product:
            if needs_grad:
                return OneDNNLinearFunction.apply(x, self.weight, self.bias, k.transpose_max_weights)
            return onednn_linear(x, self.weight, self.bias)
        return super().forward(x)


def use_cpu_kernels(model: nn.Module, kernels: CPUKernels = CPUKernels()) -> nn.Module:
    """Make every nn.Linear of model a CPULinear with these settings, in place; returns model."""
    for module in model.modules():
        if type(module) in (nn.Linear, CPULinear):
            module.__class__ = CPULinear
            module.kernels = kernels
    return model


def use_plain_kernels(model: nn.Module) -> nn.Module:
    """Undo use_cpu_kernels: every CPULinear of model is an nn.Linear again."""
    for module in model.modules():
        if type(module) is CPULinear:
            module.__class__ = nn.Linear
            del module.kernels
    return model


def kernels_of(model: nn.Module) -> CPUKernels | None:
    """The settings use_cpu_kernels gave model, or None if its Linears are plain."""
    return next((m.kernels for m in model.modules() if type(m) is CPULinear), None)


def sliced_product(x: torch.Tensor, sliced_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T + bias, with W.T cut into slices of input rows, (slices, in/slices, out)."""
    slices, _, out_features = sliced_weight.shape
    rows = x.reshape(-1, slices, x.size(-1) // slices).transpose(0, 1)  # (slices, rows, in/slices)
    y = torch.bmm(rows, sliced_weight).sum(0)
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], out_features)


def slice_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight (out, in) transposed and cut into equal slices of input rows, one per thread where
    the input size allows: (slices, in/slices, out), what sliced_product takes."""
    out_features, in_features = weight.shape
    slices = math.gcd(torch.get_num_threads(), in_features)
    return weight.t().contiguous().view(slices, in_features // slices, out_features)


@contextmanager
def training(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Within this block a model on the CPU trains with the fast kernels: those of use_cpu_kernels
    if it has them, else the default CPUKernels, taken off again when the block ends (the model
    comes back with its own classes). Elsewhere, or with kernels of its own, nothing changes."""
    if device.type != "cpu":
        yield
        return
    with _kernels_for_the_block(model):
        yield


@contextmanager
def _kernels_for_the_block(model: nn.Module) -> Iterator[CPUKernels]:
    """The model's own kernels, or the default CPUKernels until the block ends; yields them."""
    plain = kernels_of(model) is None
    if plain:
        use_cpu_kernels(model)
    try:
        yield kernels_of(model) or CPUKernels()  # (a model without Linears has none)
    finally:
        if plain:
            use_plain_kernels(model)


@contextmanager
def decoding(model: nn.Module, steps: int) -> Iterator[None]:
    """Within this block of `steps` decoding steps the model's float32 CPU Linears decode with the
    fast kernels: those of use_cpu_kernels if the model has them (else the default CPUKernels, for
    the block only), and sliced copies of the weights of `decode_min_weights` to
    `slice_max_weights` entries. The copies cost one pass over the weights and their memory until
    the block ends; a weight changed meanwhile is noticed (its version) and skips its copy.
    Nothing is copied for fewer than `slice_min_steps` steps, with sliced_decoding off, or when
    the copies would pass `decode_max_copied` weights."""
    with _kernels_for_the_block(model) as k:
        layers = [m for m in model.modules() if type(m) is CPULinear and m.weight.is_cpu and m.weight.dtype ==
                  torch.float32 and k.decode_min_weights <= m.weight.numel() <= k.slice_max_weights]
        if not k.sliced_decoding or steps < k.slice_min_steps or \
                sum(m.weight.numel() for m in layers) > k.decode_max_copied:
            layers = []
        try:
            with torch.no_grad():
                for m in layers:
                    m.sliced_weight = (m.weight._version, slice_weight(m.weight))
            yield
        finally:
            for m in layers:
                m.sliced_weight = None


class OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with oneDNN, and its gradients: dx = dy W, dW = dy^T x, db = the sum of dy
    over the rows. The input gradient goes to the BLAS for weights above transpose_max_weights."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                transpose_max_weights: int) -> torch.Tensor:
        return onednn_linear(x.contiguous(), weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, transpose_max_weights = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.transpose_max_weights = transpose_max_weights

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_rows = grad_y.view(-1, grad_y.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if weight.numel() <= ctx.transpose_max_weights:
                grad_x = onednn_linear(grad_y, weight.t())
            else:
                grad_x = (grad_rows @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_rows.t() @ x.reshape(-1, x.size(-1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias, None
