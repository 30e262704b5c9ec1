"""CPU fast paths, kept out of the model and applied explicitly.

The model is plain PyTorch (nn.Linear everywhere). On the CPU some products run faster through
other kernels than PyTorch's default BLAS; this package holds them behind one seam:
- `use_cpu_kernels(model, CPUKernels(...))` makes the model's nn.Linears take oneDNN for large
  products; `training(model, device)` does it for a block, as the Trainer's run (on the CPU,
  unless the model already has kernels), and takes them off again after it;
- `decoding(model, steps)` lays the weights out for matrix-vector products while generating
  (generate does this on the CPU);
- `keep_freed_memory()` tunes glibc's malloc for a training loop (runtime.setup does this).
Their settings are values (a frozen CPUKernels), passed in, never module globals.
"""
from mingpt.nn.kernels.linear import (CPUKernels, CPULinear, decoding, kernels_of, training, use_cpu_kernels,
                                      use_plain_kernels)
from mingpt.nn.kernels.memory import keep_freed_memory

__all__ = ["CPUKernels", "CPULinear", "decoding", "kernels_of", "training", "use_cpu_kernels", "use_plain_kernels",
           "keep_freed_memory"]
