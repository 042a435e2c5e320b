"""Dynamic batching: the batching_parameters file, the pure merge/pad/split functions, and the
Batcher's scheduling (with plain numpy model functions; real SavedModels in a real server are
test_batching_server.py's)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from modelserver.batching.merge import (
    Piece,
    SplitError,
    batch_rows,
    merge_inputs,
    padded_size,
    shape_key,
    split_outputs,
)
from modelserver.batching.options import (
    BatchingConfigError,
    BatchingOptions,
    load_batching_parameters,
    parse_batching_parameters,
)
from modelserver.batching.scheduler import Batcher
from modelserver.core.errors import ServingError
from modelserver.core.request_context import RequestContext

TF_SERVING_EXAMPLE = """
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
allowed_batch_sizes: 32
allowed_batch_sizes: 64
allowed_batch_sizes: 128
pad_variable_length_inputs: true
"""


# ---- the file


def test_parses_tf_serving_batching_file(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(TF_SERVING_EXAMPLE)
    o = load_batching_parameters(path)
    assert o.max_batch_size == 128
    assert o.batch_timeout_micros == 0
    assert o.max_enqueued_batches == 1000000
    assert o.num_batch_threads == 8
    assert o.allowed_batch_sizes == (32, 64, 128)
    assert o.pad_variable_length_inputs is True
    assert o.enable_large_batch_splitting is False


def test_unset_fields_keep_tf_serving_defaults():
    o = parse_batching_parameters("max_batch_size { value: 4 }")
    assert (o.max_batch_size, o.batch_timeout_micros, o.max_enqueued_batches) == (4, 0, 10)
    assert o.num_batch_threads >= 1
    assert load_batching_parameters(None).max_batch_size == 1000


def test_large_batch_splitting_fields():
    o = parse_batching_parameters(
        "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 16 } allowed_batch_sizes: 8 allowed_batch_sizes: 16 "
        'thread_pool_name { value: "mine" }'
    )
    assert o.enable_large_batch_splitting and o.execution_batch_size == 16
    assert o.thread_pool_name == "mine"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8",
         "monotonically increasing"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4", "must equal max_batch_size"),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative"),
        ("max_batch_size { value: 8 } no_such_field: 3", "no_such_field"),
        ("max_batch_size: 8", "max_batch_size"),  # TF Serving's wrapper syntax is required
        ("max_batch_size { value: 8 } enable_large_batch_splitting { value: true } "
         "max_execution_batch_size { value: 16 }", "must not exceed"),
    ],
)
def test_bad_files_are_rejected_with_a_clear_message(text, message):
    with pytest.raises(BatchingConfigError, match=message):
        parse_batching_parameters(text)


def test_unreadable_file(tmp_path):
    with pytest.raises(BatchingConfigError, match="cannot read batching parameters file"):
        load_batching_parameters(tmp_path / "missing.config")


# ---- pure functions


def test_batch_rows_and_shape_key():
    a = {"x": np.zeros((3, 4), np.float32), "y": np.zeros((3,), np.int64)}
    assert batch_rows(a) == 3
    assert batch_rows({"x": np.zeros((3, 4)), "y": np.zeros((2,))}) is None
    assert batch_rows({"x": np.float32(1.0).reshape(())}) is None
    k1 = shape_key(a, False)
    assert k1 == shape_key({"y": np.ones((7,), np.int64), "x": np.ones((7, 4), np.float32)}, False)
    assert k1 != shape_key({"x": np.zeros((3, 5), np.float32), "y": np.zeros((3,), np.int64)}, False)
    assert k1 != shape_key({"x": np.zeros((3, 4), np.float64), "y": np.zeros((3,), np.int64)}, False)
    # with padding, only the rank matters
    assert shape_key({"x": np.zeros((1, 4))}, True) == shape_key({"x": np.zeros((2, 9))}, True)


def test_padded_size():
    assert padded_size(3, ()) == 3
    assert padded_size(3, (2, 4, 8)) == 4
    assert padded_size(4, (2, 4, 8)) == 4
    assert padded_size(1, (2, 4, 8)) == 2


def test_merge_pad_and_split_round_trip():
    a = {"x": np.array([[1.0, 2.0]], np.float32)}
    b = {"x": np.array([[3.0, 4.0], [5.0, 6.0]], np.float32)}
    pieces = [Piece(a, 0, 1), Piece(b, 0, 2)]
    merged = merge_inputs(pieces, 4, False)
    assert merged["x"].shape == (4, 2)
    np.testing.assert_array_equal(merged["x"][:3], [[1, 2], [3, 4], [5, 6]])
    out = {"y": merged["x"] * 10, "n": np.arange(4)}
    parts = split_outputs(out, pieces, 4)
    np.testing.assert_array_equal(parts[0]["y"], [[10, 20]])
    np.testing.assert_array_equal(parts[1]["y"], [[30, 40], [50, 60]])
    np.testing.assert_array_equal(parts[1]["n"], [1, 2])
    with pytest.raises(SplitError):
        split_outputs({"s": np.float32(1.0).reshape(())}, pieces, 4)


def test_merge_pads_variable_length_inputs_with_the_first_element():
    a = {"t": np.array([[7, 8]], np.int32)}
    b = {"t": np.array([[1, 2, 3]], np.int32)}
    merged = merge_inputs([Piece(a, 0, 1), Piece(b, 0, 1)], 2, True)
    np.testing.assert_array_equal(merged["t"], [[7, 8, 7], [1, 2, 3]])
    s = {"s": np.array([b"ab"], object)}
    t = {"s": np.array([b"c"], object)}
    merged = merge_inputs([Piece(s, 0, 1), Piece(t, 0, 1)], 3, True)
    assert list(merged["s"]) == [b"ab", b"c", b"ab"]


# ---- the scheduler


class CountingModel:
    """y = 2x + 1 along dim 0; records the batch sizes it saw and can block until released."""

    def __init__(self, hold: bool = False) -> None:
        self.sizes: list[int] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, inputs):
        self.started.set()
        self.release.wait(10)
        x = inputs["x"]
        with self.lock:
            self.sizes.append(len(x))
        return {"y": x * 2 + 1}


def ctx(deadline_s: float | None = None) -> RequestContext:
    c = RequestContext(protocol="grpc", api="predict", model="m", version=1, signature="serving_default")
    if deadline_s is not None:
        c.deadline = time.perf_counter() + deadline_s
    return c


KEY = ("m", 1, "serving_default")


def queued_only(options: BatchingOptions, on_batch=None) -> Batcher:
    """A Batcher that never runs calls inline on the event loop (these tests hold the model)."""
    return Batcher(options, on_batch=on_batch, inline_below_s=0)


async def test_quiet_server_runs_a_request_at_once_without_waiting_for_the_timeout():
    model = CountingModel()
    b = queued_only(BatchingOptions(max_batch_size=8, batch_timeout_micros=5_000_000, num_batch_threads=1))
    c = ctx()
    t0 = time.perf_counter()
    out = await b.submit(KEY, model, {"x": np.array([1.0, 2.0])}, c)
    assert time.perf_counter() - t0 < 4.0  # far below the 5 s timeout
    np.testing.assert_array_equal(out["y"], [3.0, 5.0])
    assert model.sizes == [2]
    assert c.t_queue_start <= c.t_compute_start <= c.t_compute_end
    assert c.batch_size == 2
    await b.close()


async def test_requests_queued_behind_a_busy_worker_are_merged_into_one_batch():
    model = CountingModel(hold=True)
    batches: list[tuple[int, int]] = []
    b = queued_only(BatchingOptions(max_batch_size=16, batch_timeout_micros=0, num_batch_threads=1,
                                allowed_batch_sizes=(4, 16)),
                    on_batch=lambda key, rows, size: batches.append((rows, size)))
    first = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([0.0])}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    rest = [asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([float(i)] * (i % 2 + 1))}, ctx()))
            for i in range(1, 8)]
    await asyncio.sleep(0.05)
    model.release.set()
    outs = await asyncio.gather(first, *rest)
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], np.array([float(i)] * (i % 2 + 1 if i else 1)) * 2 + 1)
    # the first ran alone (padded to the allowed size 4); the other 7 requests (11 rows) ran as
    # one batch padded to 16
    assert model.sizes == [4, 16]
    assert batches == [(1, 4), (11, 16)]
    await b.close()


@pytest.mark.parametrize(("cap", "sizes"), [(None, [1, 4]), (4000, [1, 1, 3])])
async def test_a_padded_batch_takes_in_no_request_that_would_grow_it_past_the_byte_cap(cap, sizes):
    """--max_request_tensor_bytes caps a merged batch: a 1000-wide row (4000 bytes) padded into
    three 1-wide ones would make a 16,000-byte batch; with the cap it runs alone and the short
    rows run together. Without the cap the four share one batch."""
    model = CountingModel(hold=True)
    b = Batcher(BatchingOptions(max_batch_size=16, batch_timeout_micros=0, num_batch_threads=1,
                                pad_variable_length_inputs=True), inline_below_s=0, max_batch_bytes=cap)
    first = asyncio.ensure_future(b.submit(KEY, model, {"x": np.zeros((1, 1), np.float32)}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    wide = asyncio.ensure_future(b.submit(KEY, model, {"x": np.ones((1, 1000), np.float32)}, ctx()))
    short = [asyncio.ensure_future(b.submit(KEY, model, {"x": np.full((1, 1), i, np.float32)}, ctx()))
             for i in range(3)]
    await asyncio.sleep(0.05)
    model.release.set()
    await first
    assert (await wide)["y"].tolist() == [[3.0] * 1000]
    assert [(await s)["y"].shape[0] for s in short] == [1, 1, 1]
    assert model.sizes == sizes
    await b.close()


async def test_partial_batch_waits_for_the_timeout_while_another_worker_is_busy():
    model = CountingModel(hold=True)
    b = queued_only(BatchingOptions(max_batch_size=4, batch_timeout_micros=5_000_000, num_batch_threads=2))
    first = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([0.0])}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    second_ctx = ctx()
    second = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([1.0])}, second_ctx))
    third = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([2.0])}, ctx()))
    await asyncio.sleep(0.02)
    assert second_ctx.t_compute_start is None  # worker 2 idle, but the batch is neither full nor due
    model.release.set()
    await asyncio.gather(first, second, third)
    assert sorted(model.sizes) == [1, 2]
    await b.close()


async def test_partial_batch_runs_on_the_idle_worker_once_the_timeout_passes():
    held = threading.Event()

    def first_blocks(inputs):
        if inputs["x"][0] == 0.0:
            held.wait(10)
        return {"y": inputs["x"] + 1}

    b = queued_only(BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=2))
    first = asyncio.ensure_future(b.submit(KEY, first_blocks, {"x": np.array([0.0])}, ctx()))
    await asyncio.sleep(0.01)
    contexts = [ctx(), ctx()]
    pair = [b.submit(KEY, first_blocks, {"x": np.array([float(i)])}, c) for i, c in zip((1, 2), contexts, strict=True)]
    outs = await asyncio.wait_for(asyncio.gather(*pair), 5)  # while worker 1 is still held
    assert [o["y"][0] for o in outs] == [2.0, 3.0]
    assert not first.done()
    waited = contexts[0].t_compute_start - contexts[0].t_queue_start
    assert waited >= 0.045  # the partial batch waited for batch_timeout_micros
    assert contexts[0].batch_size == 2
    held.set()
    await first
    await b.close()


async def test_full_batch_starts_without_waiting_for_the_timeout():
    model = CountingModel(hold=True)
    b = queued_only(BatchingOptions(max_batch_size=2, batch_timeout_micros=60_000_000, num_batch_threads=2))
    first = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([0.0])}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    model.release.set()
    await first
    model.release.clear()
    model.started.clear()
    blocker = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([9.0])}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    pair = [asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([float(i)])}, ctx())) for i in (1, 2)]
    await asyncio.sleep(0.05)
    model.release.set()
    await asyncio.wait_for(asyncio.gather(blocker, *pair), 10)  # far less than the 60 s timeout
    assert sorted(model.sizes) == [1, 1, 2]
    await b.close()


async def test_different_shapes_and_signatures_are_not_merged():
    model = CountingModel(hold=True)
    b = queued_only(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    first = asyncio.ensure_future(b.submit(KEY, model, {"x": np.zeros((1, 2))}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    futs = [
        b.submit(KEY, model, {"x": np.zeros((1, 2))}, ctx()),
        b.submit(KEY, model, {"x": np.zeros((1, 3))}, ctx()),
        b.submit(("m", 1, "other"), model, {"x": np.zeros((1, 2))}, ctx()),
        b.submit(KEY, model, {"x": np.zeros((1, 2), np.float32)}, ctx()),
    ]
    tasks = [asyncio.ensure_future(f) for f in futs]
    await asyncio.sleep(0.02)
    model.release.set()
    outs = await asyncio.gather(first, *tasks)
    assert [o["y"].shape for o in outs] == [(1, 2), (1, 2), (1, 3), (1, 2), (1, 2)]
    assert outs[4]["y"].dtype == np.float32
    assert sorted(model.sizes) == [1, 1, 1, 1, 1]
    await b.close()


async def test_full_queue_is_resource_exhausted_at_once():
    model = CountingModel(hold=True)
    b = queued_only(BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    running = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([0.0])}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    queued = [asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([1.0])}, ctx())) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ServingError) as e:
        await b.submit(KEY, model, {"x": np.array([2.0])}, ctx())
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    model.release.set()
    await asyncio.gather(running, *queued)
    await b.close()


async def test_deadline_passing_in_the_queue_answers_deadline_exceeded_and_is_not_computed():
    model = CountingModel(hold=True)
    b = queued_only(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    running = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([0.0])}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    c = ctx(deadline_s=0.05)
    with pytest.raises(ServingError) as e:
        await b.submit(KEY, model, {"x": np.array([5.0])}, c)  # answered while the model is still busy
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert c.t_compute_start is None
    assert b.queue_depth() == {}
    model.release.set()
    await running
    await asyncio.sleep(0.05)
    assert model.sizes == [1]  # the expired request never reached the model
    await b.close()


async def test_too_large_request_is_invalid_and_large_batch_splitting_splits_it():
    model = CountingModel()
    b = queued_only(BatchingOptions(max_batch_size=4, num_batch_threads=1))
    with pytest.raises(ServingError) as e:
        await b.submit(KEY, model, {"x": np.arange(5.0)}, ctx())
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than maximum input batch size 4" in e.value.message
    await b.close()

    model = CountingModel()
    b = queued_only(BatchingOptions(max_batch_size=64, enable_large_batch_splitting=True,
                                max_execution_batch_size=8, num_batch_threads=2))
    x = np.arange(30.0)
    out = await b.submit(KEY, model, {"x": x}, ctx())
    np.testing.assert_array_equal(out["y"], x * 2 + 1)
    assert max(model.sizes) <= 8 and sum(model.sizes) == 30
    await b.close()


async def test_unbatchable_inputs_and_outputs_run_alone():
    def scalar_out(inputs):
        return {"total": np.asarray(inputs["x"].sum())}

    b = queued_only(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    # scalar input: cannot be batched, runs alone
    out = await b.submit(KEY, lambda i: {"y": i["x"] * 2}, {"x": np.asarray(3.0)}, ctx())
    assert out["y"] == 6.0
    # outputs not batched along dim 0: the merged run cannot be split, so each request runs alone
    hold = threading.Event()

    def blocking(inputs):
        hold.wait(5)
        return {"y": inputs["x"]}

    first = asyncio.ensure_future(b.submit(("b", 1, "s"), blocking, {"x": np.array([1.0])}, ctx()))
    await asyncio.sleep(0.02)
    others = [asyncio.ensure_future(b.submit(KEY, scalar_out, {"x": np.array([float(i), 1.0])}, ctx()))
              for i in range(3)]
    await asyncio.sleep(0.02)
    hold.set()
    await first
    outs = await asyncio.gather(*others)
    assert [float(o["total"]) for o in outs] == [1.0, 2.0, 3.0]
    await b.close()


async def test_model_error_fails_every_request_of_the_batch_and_the_batcher_goes_on():
    calls = []

    def failing(inputs):
        calls.append(len(inputs["x"]))
        if len(calls) == 1:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad value")
        return {"y": inputs["x"]}

    b = queued_only(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    with pytest.raises(ServingError, match="bad value"):
        await b.submit(KEY, failing, {"x": np.array([1.0])}, ctx())
    out = await b.submit(KEY, failing, {"x": np.array([2.0])}, ctx())
    assert out["y"][0] == 2.0
    await b.close()


async def test_cancelled_request_is_skipped():
    model = CountingModel(hold=True)
    b = queued_only(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    running = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([0.0])}, ctx()))
    await asyncio.to_thread(model.started.wait, 5)
    gone = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([1.0, 1.0, 1.0])}, ctx()))
    kept = asyncio.ensure_future(b.submit(KEY, model, {"x": np.array([2.0])}, ctx()))
    await asyncio.sleep(0)
    gone.cancel()
    model.release.set()
    await running
    assert (await kept)["y"][0] == 5.0
    assert model.sizes == [1, 1]
    await b.close()


async def test_under_concurrent_load_batches_grow_and_every_answer_is_right():
    sizes: list[int] = []

    def slowish(inputs):
        time.sleep(0.002)  # a model call with fixed overhead
        sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] * 3}

    b = queued_only(BatchingOptions(max_batch_size=32, batch_timeout_micros=1000, num_batch_threads=2))

    async def client(i: int) -> None:
        for j in range(20):
            v = np.array([float(i * 100 + j)], np.float32)
            out = await b.submit(KEY, slowish, {"x": v}, ctx())
            assert out["y"][0] == v[0] * 3

    await asyncio.gather(*(client(i) for i in range(32)))
    assert sum(sizes) == 640
    assert len(sizes) < 640 / 4  # requests were merged: far fewer model calls than requests
    await b.close()


async def test_cheap_calls_on_a_quiet_server_run_inline_and_slow_ones_on_a_batch_thread():
    threads: list[str] = []

    def fast(inputs):
        threads.append(threading.current_thread().name)
        return {"y": inputs["x"] + 1}

    def slow(inputs):
        threads.append(threading.current_thread().name)
        time.sleep(0.01)
        return {"y": inputs["x"] + 1}

    batches: list[tuple[int, int]] = []
    b = Batcher(BatchingOptions(max_batch_size=8, num_batch_threads=1, allowed_batch_sizes=(4, 8),
                                thread_pool_name="bt"),
                on_batch=lambda key, rows, size: batches.append((rows, size)))
    main = threading.current_thread().name
    for _ in range(3):
        c = ctx()
        out = await b.submit(KEY, fast, {"x": np.array([1.0])}, c)
        assert out["y"].tolist() == [2.0]
        assert c.t_queue_start <= c.t_compute_start <= c.t_compute_end and c.batch_size == 4
    # the first call of a signature goes to a batch thread (its cost is unknown); then inline
    assert threads[0].startswith("bt") and threads[1:] == [main, main]
    assert batches == [(1, 4)] * 3  # padded to the allowed size either way
    threads.clear()
    for _ in range(2):
        await b.submit(("m", 1, "slow"), slow, {"x": np.array([1.0])}, ctx())
    assert all(t.startswith("bt") for t in threads)  # 10 ms calls never block the event loop
    await b.close()


async def test_batches_cheaper_than_a_thread_hop_run_on_the_event_loop_under_load():
    """Under load a batch whose expected cost is below the measured thread hop runs right on the
    event loop (every waiting request resolved in that one callback), with the same answers; one
    that costs more than the hop, or than --inline_call_max_us, runs on a batch thread."""
    threads: list[tuple[str, int]] = []

    def model(cost_s: float):
        def fn(inputs):
            threads.append((threading.current_thread().name, len(inputs["x"])))
            if cost_s:
                time.sleep(cost_s)
            return {"y": inputs["x"] * 2 + 1}
        return fn

    main = threading.current_thread().name
    b = Batcher(BatchingOptions(max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=1,
                                thread_pool_name="bt"), inline_below_s=0.005)
    fast, slow = model(0), model(0.01)
    for key, fn in ((KEY, fast), (("m", 1, "slow"), slow)):
        await b.submit(key, fn, {"x": np.zeros(16)}, ctx())  # learns the cost per row, measures the hop
    assert b.policy.hop_s is not None
    threads.clear()
    outs = await asyncio.gather(*(b.submit(KEY, fast, {"x": np.array([float(i)])}, ctx()) for i in range(40)))
    assert [o["y"].tolist() for o in outs] == [[2.0 * i + 1] for i in range(40)]
    assert {t for t, _ in threads} == {main} and sum(n for _, n in threads) == 40 and len(threads) < 40
    threads.clear()
    outs = await asyncio.gather(*(b.submit(("m", 1, "slow"), slow, {"x": np.array([float(i)])}, ctx()) for i in range(8)))
    assert [o["y"].tolist() for o in outs] == [[2.0 * i + 1] for i in range(8)]
    assert all(t.startswith("bt") for t, _ in threads)  # 10 ms: above the 5 ms cap whatever the hop
    # a model error in a batch on the loop fails that batch's requests, and the batcher goes on
    def failing(inputs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad value")
    b.policy.record_call(("m", 1, "failing"), 1e-6, 1)
    results = await asyncio.gather(*(b.submit(("m", 1, "failing"), failing, {"x": np.array([1.0])}, ctx())
                                     for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ServingError) and r.code == grpc.StatusCode.INVALID_ARGUMENT for r in results)
    out = await b.submit(KEY, fast, {"x": np.array([3.0])}, ctx())
    assert out["y"].tolist() == [7.0]
    await b.close()


async def test_a_batch_on_a_thread_does_not_hold_up_cheap_batches():
    """While the only batch thread runs a slow model's batch, requests for a model cheap enough for
    the event loop still run at once (on the loop), not after the slow batch."""
    slow = CountingModel(hold=True)
    b = Batcher(BatchingOptions(max_batch_size=8, num_batch_threads=1), inline_below_s=0.005)
    b.policy.hop_s = 0.001
    b.policy.record_call(KEY, 1e-6, 1)
    busy = asyncio.ensure_future(b.submit(("m", 1, "slow"), slow, {"x": np.array([1.0])}, ctx()))
    await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 10)
    out = await asyncio.wait_for(b.submit(KEY, lambda i: {"y": i["x"] + 1}, {"x": np.array([1.0])}, ctx()), 5)
    assert out["y"].tolist() == [2.0] and not busy.done()
    slow.release.set()
    assert (await busy)["y"].tolist() == [3.0]
    await b.close()


async def test_idle_server_holds_a_batch_while_the_loop_is_still_admitting_requests():
    """Under load grpc.aio hands the loop one new RPC at a time, so every worker is often idle when
    a request arrives. The batch must not start while the loop still has work queued (requests on
    their way), or every request pays a model call alone; it starts once the loop is quiet, long
    before the (here 5 s) timeout, and a lone request still runs at once."""
    model = CountingModel()
    batches: list[tuple[int, int]] = []
    b = Batcher(BatchingOptions(max_batch_size=16, batch_timeout_micros=5_000_000, num_batch_threads=1),
                on_batch=lambda key, rows, size: batches.append((rows, size)))
    await b.submit(KEY, model, {"x": np.array([0.0])}, ctx())  # learns the call is cheap
    t0 = time.perf_counter()
    # eight requests become ready on the same loop turn, as a burst of admitted RPCs does
    outs = await asyncio.gather(*(b.submit(KEY, model, {"x": np.array([float(i)])}, ctx()) for i in range(8)))
    assert time.perf_counter() - t0 < 4.0  # the loop went quiet: no wait for the timeout
    assert [o["y"].tolist() for o in outs] == [[2.0 * i + 1] for i in range(8)]
    assert batches == [(1, 1), (8, 8)]  # one batch of eight, not eight batches of one
    await b.submit(KEY, model, {"x": np.array([9.0])}, ctx())
    assert batches[-1] == (1, 1) and model.sizes == [1, 8, 1]
    await b.close()


async def test_server_batcher_follows_inline_call_max_us():
    """`--inline_call_max_us` reaches the batcher that `model-server --enable_batching` builds
    (batcher_for): 0 keeps every call on a batch thread, the default lets cheap ones run inline."""
    from modelserver.batching.scheduler import batcher_for
    from modelserver.config.flags import parse_args

    threads: list[str] = []

    def fast(inputs):
        threads.append(threading.current_thread().name)
        return {"y": inputs["x"] + 1}

    opts = BatchingOptions(max_batch_size=8, num_batch_threads=1, thread_pool_name="bt")
    for argv, inline_after_first in ((["--inline_call_max_us=0"], False), ([], True)):
        threads.clear()
        b = batcher_for(opts, parse_args(argv))
        for _ in range(3):
            await b.submit(KEY, fast, {"x": np.array([1.0])}, ctx())
        main = threading.current_thread().name
        assert threads[0].startswith("bt")
        assert threads[1:] == ([main, main] if inline_after_first else [threads[0]] * 2), (argv, threads)
        await b.close()
