"""Inference over many rows in batches of a bounded set of shapes.

torch's CPU backend (oneDNN) builds and keeps kernels for every input shape
it sees. A worker that scores a plate meets a new number of cells in the
last batch of almost every group of fields, so its resident memory grew with
the number of distinct shapes (about 0.45 MB per shape for the ``tiny``
classifier and encoder together). Padding the last batch up to a multiple of
``PAD_ROWS`` rows keeps at most ``batch_size / PAD_ROWS`` shapes per model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PAD_ROWS = 32


def padded_rows(n: int, batch_size: int, multiple: int = PAD_ROWS) -> int:
    """The rows a batch of ``n`` rows is padded to: ``n`` rounded up to ``multiple``, at most ``batch_size``."""
    return min(batch_size, -(-n // multiple) * multiple)


def map_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int,
                multiple: int = PAD_ROWS) -> list[torch.Tensor]:
    """``fn`` over ``x`` in batches of ``batch_size`` rows; the last batch is zero-padded and its output cut back.

    ``fn`` must treat rows independently (eval mode, no batch statistics).
    """
    outputs = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        n = len(batch)
        rows = padded_rows(n, batch_size, multiple)
        if rows > n:
            batch = torch.cat([batch, batch.new_zeros((rows - n, *batch.shape[1:]))])
        outputs.append(fn(batch)[:n])
    return outputs
