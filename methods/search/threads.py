"""PyTorch intra-op threads while a search evaluates its many small candidates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def search_threads(threads: int | None) -> Iterator[None]:
    """PyTorch intra-op threads for the search's many tiny forward passes (None: unchanged).

    Candidate models are evaluated on a few batches thousands of times; on a shared
    2-core machine one thread avoids oversubscription stalls that cost 100x on tiny convs.
    """
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
