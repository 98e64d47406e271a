"""How fields are grouped into model-stage batches, and how many batches are in flight at once.

A model task scores the crops of a group of fields so the device sees full
batches. The groups are sized so their number is a multiple of the model
workers (no worker idles while another scores the plate's last group), and
only a few groups are submitted ahead of the model workers: crops are cut
just in time instead of piling up in worker memory when the CPU stage runs
faster than the device (back-pressure).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator, Sequence
from typing import TypeVar

from distributed import Client, Future, as_completed

T = TypeVar("T")


def batch_fields(tasks: Sequence[T], fields_per_batch: int, model_workers: int) -> list[list[T]]:
    """Consecutive groups of at most ``fields_per_batch`` tasks, as many as a multiple of ``model_workers``."""
    if fields_per_batch < 1 or model_workers < 1:
        raise ValueError(f"fields_per_batch and model_workers must be positive, got {fields_per_batch} and "
                         f"{model_workers}")
    if not tasks:
        return []
    batches = math.ceil(len(tasks) / fields_per_batch)
    batches = min(len(tasks), math.ceil(batches / model_workers) * model_workers)
    size = math.ceil(len(tasks) / batches)
    return [list(tasks[i:i + size]) for i in range(0, len(tasks), size)]


def batches_in_flight(model_workers: int, threads: int, fields_per_batch: int) -> int:
    """Groups to keep submitted: one per model worker being scored, plus enough to keep every thread cutting."""
    return model_workers + max(1, math.ceil(threads / fields_per_batch))


def bounded_completion(client: Client, submissions: Iterator[Future],
                       in_flight: int) -> Generator[Future, None, None]:
    """Yield futures as they complete, drawing a new one from ``submissions`` for each that finishes.

    At most ``in_flight`` drawn futures are unfinished at any time. Closing
    the iterator (or an error in the consumer) cancels the unfinished ones.
    The futures are tracked on ``client``'s own event loop: distributed's
    default (the process's default client) breaks when a notebook or test
    holds several clients.
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be positive, got {in_flight}")
    pending = as_completed(loop=client.loop)
    unfinished: set[Future] = set()
    try:
        for _ in range(in_flight):
            future = next(submissions, None)
            if future is None:
                break
            unfinished.add(future)
            pending.add(future)
        for future in pending:
            unfinished.discard(future)
            following = next(submissions, None)
            if following is not None:
                unfinished.add(following)
                pending.add(following)
            yield future
    finally:
        if unfinished:
            client.cancel(list(unfinished))
