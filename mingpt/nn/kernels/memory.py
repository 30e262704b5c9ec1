"""malloc tuning for training loops on Linux: freed activation buffers are kept for reuse."""
from __future__ import annotations

import ctypes
import sys


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    A training step frees and re-allocates the same large activation buffers every iteration.
    By default glibc gives blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) back
    to the kernel, which must then fault in and zero every page again on the next step: about
    30,000 page faults per step at 6 layers x 384 dims. Pinning the threshold at 32 MiB and never
    trimming the heap keeps them (benchmarks/RESULTS.md has the effect). The process keeps its
    peak memory until it exits, as it would with jemalloc or tcmalloc. Linux/glibc only; returns
    whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**30))
