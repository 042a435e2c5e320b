"""1,000 malformed v2 REST bodies and 1,000 malformed ModelInfer messages (v2_hostile_requests.py,
sent by hostile_requests.run_cases) against a real model-server run as the operator renders it:
every answer is a 4xx, or INVALID_ARGUMENT (NOT_FOUND for an unknown model or random bytes), none
a 5xx or a server error, no traceback in the log, and the server serves on both protocols after."""

from __future__ import annotations

import json
from pathlib import Path

import hostile_requests as hostile
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import v2_hostile_requests as v2

N = 1000


@pytest.fixture(scope="module")
def server(start_server, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("v2hostile")
    (d / "batching.config").write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\n")
    return start_server([f"--model_config_file={models_dir / 'models.config'}", "--file_system_poll_wait_seconds=0",
                         "--enable_batching", f"--batching_parameters_file={d / 'batching.config'}",
                         f"--max_request_tensor_bytes={4 << 20}", f"--rest_api_max_request_bytes={8 << 20}",
                         "--rest_api_timeout_in_ms=5000", "--enable_reload_config_rpc=false"])


@pytest.fixture(scope="module")
def target(server) -> hostile.Target:  # type: ignore[no-untyped-def]
    return hostile.Target("127.0.0.1", server.rest_port, server.grpc_port, 0, "", server.proc.pid)


def serves_v2(server) -> None:  # type: ignore[no-untyped-def]
    with grpcclient.InferenceServerClient(server.target) as c:
        x = grpcclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([1.0], np.float32))
        assert c.infer("half_plus_two", [x]).as_numpy("y").tolist() == [2.5]


@pytest.mark.parametrize("port", ["rest", "grpc"])
def test_malformed_v2_requests_are_refused_and_the_server_serves_on(server, target, port: str) -> None:  # type: ignore[no-untyped-def]
    cases = v2.rest_cases(21) if port == "rest" else v2.grpc_cases(21)
    tally = hostile.run_cases(target, port, cases, N)
    report = json.dumps(tally.as_json(), indent=1)[:4000]
    assert tally.sent == N and tally.failed == 0, report
    for (kind, outcome), _n in tally.by_kind.items():
        if port == "rest":
            assert outcome.isdigit() and 400 <= int(outcome) < 500, (kind, outcome, report)
        else:
            assert outcome in {"INVALID_ARGUMENT"} | v2.GRPC_ALSO_ALLOWED.get(kind, set()), (kind, outcome, report)
    assert len({kind for kind, _ in tally.by_kind}) >= 10  # every kind of malformation was sent
    assert server.proc.poll() is None
    serves_v2(server)
    assert requests.post(server.url + "/v1/models/half_plus_two:predict", json={"instances": [1.0]},
                         timeout=30).json() == {"predictions": [2.5]}
    assert hostile.tracebacks(server.output()) == 0, server.output()[-3000:]
