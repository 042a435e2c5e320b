"""The server's pure decisions and conversions, without a process: flags, config files, version
policies, label rules, availability-preserving unloads, REST JSON and TensorProto conversion."""

from __future__ import annotations

import json
import types
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from modelserver.config.flags import (
    FlagError,
    ignored_combinations,
    parse_args,
    rest_api_port,
    unimplemented_given,
    usage,
)
from modelserver.config.model_config import (
    ConfigError,
    VersionPolicy,
    model_configs_from_proto,
    parse_model_config_text,
)
from modelserver.core.errors import ServingError
from modelserver.core.manager import aspired_versions, label_error, retry_due, versions_to_unload
from modelserver.core.servable import Signature, TensorSpec, validate_inputs
from modelserver.core.tensors import to_ndarray, to_tensor_proto
from modelserver.main import gpu_memory_limit_mb, tf_thread_counts
from modelserver.protocol import rest_json
from modelserver.protocol.grpc_service import parse_channel_arguments, server_options

# ---- flags -------------------------------------------------------------------------------------


def test_flags_forms_and_defaults() -> None:
    f = parse_args(["--port", "9000", "--rest_api_port=8501", "--enable_batching", "--noenable_model_warmup",
                    "--allow_version_labels_for_unavailable_models=false", "-model_name=m",
                    "--per_process_gpu_memory_fraction=0.5"])
    assert (f.port, f.rest_api_port, f.enable_batching, f.enable_model_warmup) == (9000, 8501, True, False)
    assert f.allow_version_labels_for_unavailable_models is False and f.model_name == "m"
    assert f.per_process_gpu_memory_fraction == 0.5
    d = parse_args([])
    assert (d.port, d.rest_api_port, d.rest_api_timeout_in_ms, d.file_system_poll_wait_seconds) == (8500, 0, 30000, 1)
    assert (d.model_config_file_poll_wait_seconds, d.max_num_load_retries, d.enable_model_warmup) == (0, 5, True)


@pytest.mark.parametrize("argv", [["--bogus"], ["--port=abc"], ["--enable_batching=maybe"], ["stray"], ["--port"],
                                  ["--tensorflow_caller_thread=sometimes"]])
def test_flags_rejected(argv: list[str]) -> None:
    with pytest.raises(FlagError):
        parse_args(argv)


def test_unimplemented_flags_listed() -> None:
    f = parse_args(["--use_alts_credentials", "--port=1", "--grpc_max_threads=3", "--ssl_config_file=x"])
    assert unimplemented_given(f) == ["grpc_max_threads", "use_alts_credentials"]
    assert "--model_config_file_poll_wait_seconds" in usage()


@pytest.mark.parametrize(("argv", "expected"), [
    (["--batching_parameters_file=b", "--model_base_path=/m"], ["--batching_parameters_file has no effect"]),
    (["--enable_batching", "--batching_parameters_file=b", "--model_base_path=/m"], []),
    (["--model_config_file=c", "--model_name=x", "--model_base_path=/m"],
     ["--model_name has no effect", "--model_base_path has no effect"]),
    (["--model_base_path=/m", "--model_config_file_poll_wait_seconds=5"],
     ["--model_config_file_poll_wait_seconds has no effect"]),
    (["--model_base_path=/m", "--noenable_model_warmup", "--num_request_iterations_for_warmup=3"],
     ["--num_request_iterations_for_warmup has no effect"]),
    (["--model_name=x", "--model_base_path=/m", "--num_request_iterations_for_warmup=3"], []),
    (["--model_base_path=/m", "--monitoring_config_file=mon"], ["--monitoring_config_file has no effect"]),
    (["--model_base_path=/m", "--monitoring_config_file=mon", "--rest_api_port=8501"], []),
])
def test_ineffective_flag_combinations_named(argv: list[str], expected: list[str]) -> None:
    found = ignored_combinations(parse_args(argv))
    assert len(found) == len(expected) and all(f.startswith(e) for f, e in zip(found, expected, strict=True)), found


def test_channel_arguments() -> None:
    assert parse_channel_arguments("grpc.max_concurrent_streams=100, grpc.primary_user_agent=x") == [
        ("grpc.max_concurrent_streams", 100), ("grpc.primary_user_agent", "x")]
    opts = dict(server_options("grpc.max_receive_message_length=1024"))
    assert opts["grpc.max_receive_message_length"] == 1024 and opts["grpc.max_send_message_length"] == 2**31 - 1
    # the receive limit follows --max_request_tensor_bytes (twice it; TF Serving's 2 GiB without it);
    # the connection limits are set and may be overridden
    opts = dict(server_options("grpc.max_connection_idle_ms=1000", 64 << 20))
    assert opts["grpc.max_receive_message_length"] == 128 << 20
    assert opts["grpc.max_connection_idle_ms"] == 1000 and opts["grpc.server_handshake_timeout_ms"] == 10_000
    assert dict(server_options("", 0))["grpc.max_receive_message_length"] == 2**31 - 1
    assert dict(server_options("", 2**31))["grpc.max_receive_message_length"] == 2**31 - 1
    with pytest.raises(ValueError):
        parse_channel_arguments("novalue")


def test_threads_and_gpu_fraction() -> None:
    assert tf_thread_counts(parse_args(["--tensorflow_session_parallelism=3"])) == (3, 3)
    assert tf_thread_counts(parse_args(["--tensorflow_intra_op_parallelism=2"])) == (2, 0)
    assert gpu_memory_limit_mb(80_000, 0.25) == 20_000


# ---- config ------------------------------------------------------------------------------------


def test_model_config_parsed_with_real_protos() -> None:
    cfgs = model_configs_from_proto(parse_model_config_text("""
        model_config_list {
          config { name: "a" base_path: "/m/a" model_platform: "tensorflow"
                   model_version_policy { specific { versions: 3 versions: 1 } }
                   version_labels { key: "stable" value: 1 } }
          config { name: "b" base_path: "/m/b" model_version_policy { latest { num_versions: 2 } } }
          config { name: "c" base_path: "/m/c" model_version_policy { all {} } }
          config { name: "d" base_path: "/m/d" }
        }"""))
    assert [c.policy for c in cfgs] == [VersionPolicy("specific", versions=(1, 3)), VersionPolicy("latest", 2),
                                        VersionPolicy("all"), VersionPolicy("latest", 1)]
    assert cfgs[0].labels == {"stable": 1}


@pytest.mark.parametrize(("text", "words"), [
    ("model_config_list { config { name: 'a' } }", "base_path"),
    ("model_config_list { config { base_path: '/x' } }", "empty name"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }", "pytorch"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_version_policy { specific {} } } }", "no versions"),
    ("model_config_list { config { name: 'a' base_path: '/x' version_labels { key: 'l' value: 0 } } }", "invalid version"),
    ("custom_model_config {}", "custom_model_config"),
    ("model_config_list { config { nme: 'a' } }", "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:"),
])
def test_model_config_rejected(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        model_configs_from_proto(parse_model_config_text(text))


# ---- manager decisions -------------------------------------------------------------------------


def test_aspired_versions() -> None:
    assert aspired_versions(VersionPolicy("latest", 1), [1, 3, 2]) == {3}
    assert aspired_versions(VersionPolicy("latest", 2), [1, 3, 2]) == {2, 3}
    assert aspired_versions(VersionPolicy("all"), [1, 2]) == {1, 2}
    assert aspired_versions(VersionPolicy("specific", versions=(2, 5)), [1, 2, 3]) == {2}
    assert aspired_versions(VersionPolicy("latest", 1), []) == set()


def test_versions_to_unload_preserves_availability() -> None:
    assert versions_to_unload({1}, {2}, {2}) == {1}  # v2 is up: v1 goes
    assert versions_to_unload({1}, {2}, set()) == set()  # v2 failed / not up: keep v1 serving
    assert versions_to_unload({1, 2}, {3}, set()) == {1}  # keep only the newest old one


def test_retry_due() -> None:
    assert retry_due(attempts=1, max_retries=5, retry_at=10.0, now=10.0)
    assert not retry_due(attempts=1, max_retries=5, retry_at=10.0, now=9.0)
    assert not retry_due(attempts=6, max_retries=5, retry_at=0.0, now=9.0)  # 1 try + 5 retries done
    assert not retry_due(attempts=1, max_retries=0, retry_at=0.0, now=9.0)


def test_label_rules() -> None:
    assert label_error("m", {"stable": 1}, {}, {1, 2}, False) is None
    err = label_error("m", {"stable": 3}, {}, {1, 2}, False)
    assert isinstance(err, ServingError) and err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 3 of model m" in err.message
    assert label_error("m", {"canary": 3}, {}, {1}, True) is None  # new label: allowed with the flag
    assert label_error("m", {"stable": 3}, {"stable": 1}, {1}, True) is not None  # moving: never
    assert label_error("m", {"stable": 3}, {"stable": 3}, {1}, True) is None  # unchanged


# ---- input validation and conversions -----------------------------------------------------------


def _sig(**inputs: tuple[np.dtype, tuple[int | None, ...]]) -> Signature:
    specs = {k: TensorSpec(k, np.dtype(dt), 0, np.dtype(dt).name, shape) for k, (dt, shape) in inputs.items()}
    return Signature("s", "tensorflow/serving/predict", specs, {}, lambda x: x, ", ".join(sorted(specs)))


def test_validate_inputs() -> None:
    sig = _sig(x=(np.float32, (None, 2)))
    validate_inputs(sig, {"x": np.zeros((3, 2), np.float32)})
    validate_inputs(sig, {"x": np.zeros((3,), np.float32)})  # shapes are TensorFlow's to judge, as in TF Serving
    validate_inputs(sig, {"x": np.zeros((3, 3, 1), np.float32)})
    for bad, words in [({"x": np.zeros((3, 2))}, "float32"),
                       ({}, "Missing"), ({"x": np.zeros((1, 2), np.float32), "y": np.zeros(1)}, "alias")]:
        with pytest.raises(ServingError, match=words):
            validate_inputs(sig, bad)


def test_rest_json_row_and_columnar() -> None:
    sig = _sig(a=(np.float32, (None,)), b=(object, (None,)))
    tensors, row = rest_json.predict_inputs({"instances": [{"a": 1, "b": "x"}, {"a": 2.5, "b": {"b64": "eQ=="}}]}, sig)
    assert row and tensors["a"].dtype == np.float32 and tensors["a"].tolist() == [1.0, 2.5]
    assert tensors["b"].tolist() == [b"x", b"y"]
    tensors, row = rest_json.predict_inputs({"inputs": {"a": [1.0], "b": ["z"]}}, sig)
    assert not row and tensors["b"].tolist() == [b"z"]
    int_sig = _sig(i=(np.int64, (None,)))
    with pytest.raises(ServingError, match="integer"):
        rest_json.predict_inputs({"instances": [1.5]}, int_sig)


def test_rest_json_outputs() -> None:
    out = {"y": np.array([0.1, 2.5], np.float32), "name_bytes": np.array([b"\x00"], dtype=object)}
    assert json.loads(rest_json.predict_response({"y": out["y"]}, row=True)) == {"predictions": [0.1, 2.5]}
    assert json.loads(rest_json.predict_response(out, row=False)) == {
        "outputs": {"y": [0.1, 2.5], "name_bytes": [{"b64": "AA=="}]}}
    with pytest.raises(ServingError):
        rest_json.predict_response(out, row=True)  # different batch sizes
    feat = rest_json.feature_from_json("f", [1, 2])
    assert list(feat.int64_list.value) == [1, 2]
    assert list(rest_json.feature_from_json("f", [1, 2.5]).float_list.value) == [1.0, 2.5]
    assert list(rest_json.feature_from_json("f", {"b64": "AA=="}).bytes_list.value) == [b"\x00"]


@pytest.mark.parametrize("value", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64), np.array([True]),
    np.array([b"a", b"bc"], dtype=object), np.array(3.0, np.float64), np.zeros((0, 4), np.int32),
])
def test_tensor_round_trip(value: np.ndarray) -> None:
    back = to_ndarray("v", to_tensor_proto(value))
    np.testing.assert_array_equal(back, value)
    # and what TF's own client writes (float_val / string_val / tensor_content) reads the same
    np.testing.assert_array_equal(to_ndarray("v", tf.make_tensor_proto(value)), value)
    np.testing.assert_array_equal(tf.make_ndarray(to_tensor_proto(value)), value)
    np.testing.assert_array_equal(tf.make_ndarray(to_tensor_proto(value, as_content=True)), value)


@pytest.mark.parametrize("value, field", [
    (np.array([[2.5, 3.0]], np.float32), "float_val"), (np.array([1.5], np.float64), "double_val"),
    (np.array([7, -1], np.int32), "int_val"), (np.array([7], np.uint8), "int_val"),
    (np.array([2**40], np.int64), "int64_val"), (np.array([True, False]), "bool_val"),
    (np.array([1.5], np.float16), "half_val"), (np.array([b"x"], dtype=object), "string_val"),
])
def test_responses_use_typed_value_fields_like_tf_serving(value: np.ndarray, field: str) -> None:
    """TF Serving answers with Tensor::AsProtoField (float_val, int_val, ...), not tensor_content:
    clients in other languages read those fields directly."""
    proto = to_tensor_proto(value)
    assert not proto.tensor_content and len(getattr(proto, field)) == value.size
    np.testing.assert_array_equal(tf.make_ndarray(proto), value)


# ---- runner ------------------------------------------------------------------------------------


async def test_direct_runner_runs_calls_cheaper_than_a_thread_hop_on_the_loop() -> None:
    import asyncio
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from modelserver.core.request_context import RequestContext
    from modelserver.core.runner import DirectRunner

    main_thread = threading.current_thread().name
    where: list[str] = []

    def fast(inputs: dict) -> dict:  # type: ignore[type-arg]
        where.append(threading.current_thread().name)
        return inputs

    def slow(inputs: dict) -> dict:  # type: ignore[type-arg]
        where.append(threading.current_thread().name)
        time.sleep(0.01)
        return inputs

    def req(rows: int = 1) -> RequestContext:
        return RequestContext("grpc", "predict", batch_size=rows)

    with ThreadPoolExecutor(2, thread_name_prefix="model") as pool:
        runner = DirectRunner(pool, inline_below_s=0.005)
        ctx = req()
        assert await runner.submit("fast", fast, {"a": np.zeros(1)}, ctx) == {"a": np.zeros(1)}
        assert ctx.t_compute_start is not None and ctx.t_compute_end is not None
        assert runner.policy.hop_s is not None and runner.policy.hop_s > 0  # the pool round trip, measured
        await runner.submit("fast", fast, {}, req())
        for _ in range(2):
            await runner.submit("slow", slow, {}, req())
        assert where[0].startswith("model") and where[1] == main_thread  # first call unknown: pool
        assert all(w.startswith("model") for w in where[2:])  # slower than a hop: always the pool
        where.clear()
        # a cheap call does not wait for the pool while a slow one runs there
        await asyncio.gather(runner.submit("slow", slow, {}, req()), runner.submit("fast", fast, {}, req()))
        assert main_thread in where and any(w.startswith("model") for w in where)
        # a big batch of a fast signature is estimated per row, so it goes to the pool
        where.clear()
        await runner.submit("fast", fast, {}, req(10**7))
        assert where[0].startswith("model")
        # the comparison is with the measured hop, not a fixed threshold: a hop cheaper than the
        # call keeps it on the pool (and is measured again there)
        where.clear()
        runner.policy.hop_s = 1e-12
        await runner.submit("fast", fast, {}, req())
        assert where[0].startswith("model") and runner.policy.hop_s > 1e-12
        # --inline_call_max_us=0: never on the loop
        never = DirectRunner(pool, inline_below_s=0)
        where.clear()
        for _ in range(3):
            await never.submit("fast", fast, {}, req())
        assert all(w.startswith("model") for w in where)


def test_rest_port_equal_to_grpc_port_is_skipped() -> None:
    assert rest_api_port(parse_args(["--port=9000", "--rest_api_port=9000"])) == 0  # TF Serving: error, no REST
    assert rest_api_port(parse_args(["--port=9000", "--rest_api_port=9001"])) == 9001
    assert rest_api_port(parse_args(["--port=9000"])) == 0


def test_not_ready_until_the_initial_config_is_applied(tmp_path: Path) -> None:
    """A model with one version AVAILABLE is not enough while the initial config's other versions
    load: its labels are set only after them, so a ready pod would answer 'Unrecognized label'."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from modelserver.config.model_config import ModelConfig
    from modelserver.core.manager import Manager

    for v in (1, 2):
        (tmp_path / "m" / str(v)).mkdir(parents=True)
        (tmp_path / "m" / str(v) / "saved_model.pb").write_bytes(b"")
    release_v2 = threading.Event()

    class SlowV2(Manager):
        def _load_blocking(self, name, version, version_dir):  # type: ignore[no-untyped-def]
            if version == 2:
                release_v2.wait(30)
            return types.SimpleNamespace(name=name, version=version)

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as pool:
            mgr = SlowV2(pool)
            load = asyncio.ensure_future(mgr.reload([ModelConfig(
                "m", str(tmp_path / "m"), VersionPolicy("all"), labels={"stable": 1, "canary": 2})]))
            while mgr.models.get("m") is None or mgr.models["m"].latest is None:  # v1 AVAILABLE, v2 loading
                await asyncio.sleep(0.01)
            assert not mgr.is_ready() and mgr.not_ready_models() == ["m"]
            with pytest.raises(ServingError):
                mgr.resolve("m", label="stable")
            release_v2.set()
            await load
            assert mgr.is_ready() and mgr.not_ready_models() == []
            assert mgr.resolve("m", label="stable").version == 1

    asyncio.run(scenario())
