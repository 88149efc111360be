"""Torch thread count for tiny models: their ops are too small to split across cores."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def one_thread():
    """One torch intra-op thread for the body, restored afterwards. On CPU, tiny models (the
    built-ins have 94k and 4k parameters) run many times slower with OpenMP threads spinning on ops
    too small to split (measured 16× on 2 busy cores; 1.1–1.4 s vs 2.7–3.2 s of CPU to score the
    built-in pool)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
