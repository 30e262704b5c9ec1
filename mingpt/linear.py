"""Linear: nn.Linear, with faster matrix products on the CPU where they were measured faster.

PyTorch sends a float32 matmul on the CPU to its BLAS (MKL). On this project's 2-core AMD EPYC
two other routes beat it for the products a GPT makes (benchmarks/kernels.py, benchmarks/RESULTS.md):
- Large products (rows x weights of 2**27 multiply-adds and more: training or evaluating the
  6/6/384 model, GPT-2) go to oneDNN, which ships inside the same PyTorch build and generates
  kernels for the CPU it finds: the forward product and the input's gradient are ~1.1-1.3x faster.
  The weight's gradient stays with the BLAS, which is faster at it.
- Decoding multiplies one vector by every weight matrix, so its time goes into reading the
  weights. Inside `decoding(model, steps)`, which generate() uses, each weight of 128K to 4M
  entries is kept transposed and cut into one slice of input rows per thread: one batched product,
  in which each thread streams its own contiguous slice, then a sum of the slices' results. That
  reads the weights ~1.1-1.3x faster than oneDNN's matrix-vector kernel, and oneDNN ~1.45x faster
  than the BLAS; oneDNN's kernel is what decoding takes outside the block, for bigger weights and
  for batches of 5 to 16 rows.
Small products keep nn.Linear's path: there oneDNN's fixed cost per call (~20 us) and the Python
autograd Function below cost more than they save. So do CUDA, other dtypes, autocast (which picks
its own precision) and torch.compile (which picks its own kernels). The results equal nn.Linear's
up to float rounding.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
SPLIT_DECODE = True  # decoding() prepares the sliced weights (off: oneDNN's matrix-vector kernel)
DECODE_MAX_ROWS = 16  # "decoding": at most this many rows (batch x new positions)
SPLIT_MAX_ROWS = 4  # the sliced product wins up to batch 4; oneDNN beyond
DECODE_MIN_WEIGHTS = 2**17  # smaller matrices: the BLAS's lower cost per call wins
SLICE_MAX_WEIGHTS = 2**22  # GPT-2's 38M-weight head: no faster sliced, and the costliest copy
SLICE_MIN_STEPS = 32  # the copies cost about 5 decoding steps and save ~15-20% of each
DECODE_MAX_COPIED = 2**28  # decoding() copies at most this many weights in all (1 GiB of float32)
LARGE_PRODUCT = 2**27  # rows x weights from which oneDNN pays off with gradients
TRANSPOSE_MAX_WEIGHTS = 2**22  # oneDNN copies a transposed weight: above this the BLAS wins


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias with oneDNN; weight is (out_features, in_features)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class Linear(nn.Linear):
    """nn.Linear that takes the faster kernels described above where they apply."""

    # set inside decoding(): (the weight's version when copied, the weight as (slices, in/slices, out))
    sliced_weight: tuple[int, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cpu and x.dtype == self.weight.dtype == torch.float32) or torch.is_autocast_enabled("cpu") \
                or torch.compiler.is_compiling():
            return super().forward(x)
        rows = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if 1 <= rows <= DECODE_MAX_ROWS and not needs_grad:
            sliced = self.sliced_weight
            if sliced is not None and rows <= SPLIT_MAX_ROWS and sliced[0] == self.weight._version:
                return sliced_product(x, sliced[1], self.bias)
            if ONEDNN and self.weight.numel() >= DECODE_MIN_WEIGHTS:
                return onednn_linear(x, self.weight, self.bias)
        elif ONEDNN and rows * self.weight.numel() >= LARGE_PRODUCT:
            if needs_grad:
                return OneDNNLinearFunction.apply(x, self.weight, self.bias)
            return onednn_linear(x, self.weight, self.bias)
        return super().forward(x)


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
def decoding(model: nn.Module, steps: int) -> Iterator[None]:
    """Within this block of `steps` decoding steps the model's float32 CPU Linears of 128K to 4M
    weights decode with sliced copies of their weights (see the module docstring). The copies cost
    one pass over the weights and their memory until the block ends; a weight changed meanwhile
    is noticed (its version) and skips its copy. Nothing is copied for fewer than SLICE_MIN_STEPS
    steps, when SPLIT_DECODE is off, or when the copies would pass DECODE_MAX_COPIED weights."""
    layers = [m for m in model.modules() if isinstance(m, Linear) and m.weight.is_cpu
              and m.weight.dtype == torch.float32 and DECODE_MIN_WEIGHTS <= m.weight.numel() <= SLICE_MAX_WEIGHTS]
    if not SPLIT_DECODE or steps < SLICE_MIN_STEPS or sum(m.weight.numel() for m in layers) > DECODE_MAX_COPIED:
        layers = []
    with torch.no_grad():
        for m in layers:
            m.sliced_weight = (m.weight._version, slice_weight(m.weight))
    try:
        yield
    finally:
        for m in layers:
            m.sliced_weight = None


class OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with oneDNN, and its gradients: dx = dy W, dW = dy^T x, db = the sum of dy
    over the rows."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return onednn_linear(x.contiguous(), weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_rows = grad_y.view(-1, grad_y.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if weight.numel() <= TRANSPOSE_MAX_WEIGHTS:
                grad_x = onednn_linear(grad_y, weight.t())
            else:
                grad_x = (grad_rows @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_rows.t() @ x.reshape(-1, x.size(-1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias
