"""Model-stage batching: groups balanced over model workers, and a bounded number of groups in flight."""

from __future__ import annotations

import time

import pytest
from distributed import Client, LocalCluster

from screenxai.pipeline.batching import batch_fields, batches_in_flight, bounded_completion


@pytest.mark.parametrize(("fields", "per_batch", "workers", "sizes"), [
    (24, 8, 2, [6, 6, 6, 6]),  # 3 groups of 8 would leave one of 2 workers idle for the last third
    (96, 8, 2, [8] * 12),
    (25, 8, 2, [7, 7, 7, 4]),
    (10, 8, 1, [5, 5]),  # even groups rather than a full one and a scrap
    (3, 8, 4, [1, 1, 1]),  # never more groups than fields
])
def test_groups_are_a_multiple_of_the_model_workers(fields, per_batch, workers, sizes):
    groups = batch_fields(list(range(fields)), per_batch, workers)
    assert [len(g) for g in groups] == sizes
    assert [t for g in groups for t in g] == list(range(fields))  # every field once, in order


def test_batching_refuses_nonsense_sizes():
    with pytest.raises(ValueError, match="positive"):
        batch_fields([1, 2], 0, 1)
    assert batch_fields([], 8, 2) == []
    assert batches_in_flight(1, 16, 8) == 3  # the GPU's group and two groups being cut by 16 threads


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def test_no_more_than_in_flight_futures_are_unfinished(client):
    drawn = []

    def submissions():
        for i in range(12):
            unfinished = sum(not f.done() for f in drawn)
            drawn.append(client.submit(time.sleep, 0.05, key=f"sleep-{i}", pure=False))
            yield drawn[-1], unfinished

    stream = submissions()
    seen_unfinished = []

    def futures():
        for future, unfinished in stream:
            seen_unfinished.append(unfinished)
            yield future

    completed = list(bounded_completion(client, futures(), 3))
    assert len(completed) == 12 and all(f.status == "finished" for f in completed)
    assert max(seen_unfinished) <= 3
    assert max(seen_unfinished) >= 1  # the bound, not a serial loop, is what limited it


def test_closing_the_stream_cancels_what_is_left(client):
    futures = [client.submit(time.sleep, 5, key=f"long-{i}", pure=False) for i in range(3)]
    quick = client.submit(lambda: 1, key="quick", pure=False)
    stream = bounded_completion(client, iter([quick, *futures]), 4)
    assert next(stream) is quick
    stream.close()
    deadline = time.time() + 5
    while time.time() < deadline and not all(f.cancelled() for f in futures):
        time.sleep(0.05)
    assert all(f.cancelled() for f in futures)



def test_futures_of_a_client_that_is_not_the_default_complete_on_its_own_loop():
    """A client made later becomes the default; the stream must still track futures on the client it was given.

    Tracked on the default client's loop, a future still running binds its
    completion event there, and waiting for it through its own client raises
    "bound to a different event loop" (a worker lost mid-run brings finished
    futures back to this state).
    """
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as mine, \
            Client(mine) as client, \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as other, \
            Client(other) as newer_default:
        assert newer_default.loop is not client.loop
        first = client.submit(time.sleep, 0.1, key="own-loop-first", pure=False)
        last = client.submit(time.sleep, 1.5, key="own-loop-last", pure=False)
        stream = bounded_completion(client, iter([first, last]), 2)
        assert next(stream) is first
        assert not last.done() and last.result() is None  # waited for through its own client while tracked
        assert list(stream) == [last]
