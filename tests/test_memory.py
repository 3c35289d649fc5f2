"""The peak memory a run reports (``peak_memory_mb`` in ``summary.json``)."""

from __future__ import annotations

import torch

from nettrain.memory import peak_memory, reset_peak, retain_freed_memory

MB = 200  # a tensor this large moves the peak by about as much


def test_the_peak_counts_a_large_tensor_and_restarts_at_reset() -> None:
    """Also when freed memory is retained, as in a run: the reset trims the heap."""
    assert retain_freed_memory() in ("retain", "system")
    reset_peak()
    before = peak_memory()["peak_memory_mb"]
    big = torch.ones(MB * 2**20 // 4)  # float32, every page touched
    during = peak_memory()["peak_memory_mb"]
    assert during >= before + 0.9 * MB
    del big
    reset_peak()  # the next run's peak: without the tensor freed above
    assert peak_memory()["peak_memory_mb"] < during - 0.9 * MB
