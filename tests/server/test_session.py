"""How a loaded version's session runs its signatures (servable.SessionOptions): on the calling
thread or on TensorFlow's inter-op pool, chosen by measurement, with or without thread spinning;
the answers are the same every way."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from modelserver.core.servable import FasterOf, SessionOptions, load_servable, session_config


def test_faster_of_keeps_the_faster_callable_once_both_are_measured() -> None:
    calls: list[str] = []

    def slow(x: np.ndarray) -> np.ndarray:
        calls.append("slow")
        time.sleep(0.002)
        return x + 1

    def fast(x: np.ndarray) -> np.ndarray:
        calls.append("fast")
        return x + 1

    run = FasterOf(slow, fast, probes=3)
    for i in range(12):
        assert run(np.full(2, float(i))).tolist() == [i + 1.0, i + 1.0]
        if run.chose_second is None:
            assert abs(calls.count("slow") - calls.count("fast")) <= 1  # probing: alternates
    assert run.chose_second is True and calls[-4:] == ["fast"] * 4
    # compared per row: the second saw batches of 8 (0.4 ms a row), the first batches of 1 (1 ms)
    per_row = FasterOf(lambda x: time.sleep(0.001 * len(x)) or x, lambda x: time.sleep(0.003) or x, probes=2)
    for n in (1, 8) * 4:
        per_row(np.zeros(n))
    assert per_row.chose_second is True


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf1"])
@pytest.mark.parametrize("caller_thread", ["auto", "always", "never"])
def test_every_way_of_running_a_session_gives_the_same_answers(models_dir: Path, model: str,
                                                               caller_thread: str) -> None:
    versions = sorted(p for p in (models_dir / model).iterdir() if p.name.isdigit())
    servable = load_servable(model, int(versions[-1].name), versions[-1],
                             session_options=SessionOptions(thread_spinning=caller_thread != "never",
                                                            caller_thread=caller_thread))
    sig = servable.signature("")
    name = next(iter(sig.inputs))
    for n in (1, 3, 1, 5) * 6:  # past the probes of "auto"
        x = np.arange(n, dtype=np.float32).reshape((n, 1) if sig.inputs[name].shape == (None, 1) else (n,))
        (out,) = sig.run({name: x}).values()
        np.testing.assert_array_equal(out.reshape(-1), x.reshape(-1) * 0.5 + 2)


def test_session_config_keeps_the_process_threads_and_applies_the_options() -> None:
    import tensorflow as tf

    base = session_config(SessionOptions())
    assert base.intra_op_parallelism_threads == tf.config.threading.get_intra_op_parallelism_threads()
    assert not base.experimental.disable_thread_spinning
    assert session_config(SessionOptions(thread_spinning=False)).experimental.disable_thread_spinning
