"""Tokenized document blocks as the pack step receives them, built by hand (plain functions)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def token_block(rows: list[tuple[int, int, int]], tokens_per_row: int = 5):
    """A tokenized document block as the pack step receives it: (epoch, file_pos, row) per document."""
    n = len(rows)
    flat = np.arange(1, n * tokens_per_row + 1, dtype=np.int32)
    offsets = np.arange(0, n * tokens_per_row + 1, tokens_per_row, dtype=np.int32)
    return pa.table({
        "epoch": pa.array([r[0] for r in rows], pa.int32()), "file_pos": pa.array([r[1] for r in rows], pa.int32()),
        "row": pa.array([r[2] for r in rows], pa.int64()), "piece": pa.array([0] * n, pa.int32()),
        "last_piece": pa.array([True] * n), "bad": pa.array([""] * n),
        "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
    })
