"""llama.cpp backend pieces that need no model: the numerics of an evidence read."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from adafuse.backends.llamacpp import _row_logsumexp  # noqa: E402


@pytest.mark.parametrize("n_rows", [1, 3, 4, 5, 64])
@pytest.mark.parametrize("block", [1, 4, 7])
def test_blockwise_normalisation_gives_the_whole_chunks_numbers_bit_for_bit(n_rows, block):
    # Recorded runs' member weights come from these numbers, so the memory saving must not move a single bit.
    rows = (np.random.default_rng(n_rows).standard_normal((n_rows, 4096)) * 8).astype(np.float32)
    rows[0, :10] = 60.0  # a peaked row, as a confident model gives
    peak = rows.max(axis=1, keepdims=True)
    whole = (peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))).astype(np.float64)
    got = _row_logsumexp(rows, block=block)
    assert got.dtype == np.float64
    assert np.array_equal(got, whole)
    assert np.all(np.isfinite(got))
