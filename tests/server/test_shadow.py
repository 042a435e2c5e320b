"""Shadow traffic (modelserver.core.shadow): the comparison as a table, the routing table's `shadow`
entry, and a real model-server mirroring the stable version's requests to a candidate: users get
only the stable version's answers, and the metrics say how the candidate's answers and times differ
on the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from modelserver.core.errors import ServingError
from modelserver.core.routing import parse_table
from modelserver.core.shadow import Comparison, compare
from server_support import wait_for

MODEL = "two_versions"  # demo: version 1 answers 0.5x+2, version 2 answers x+3


@pytest.mark.parametrize(("primary", "shadow", "want"), [
    ({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.5])}, Comparison(0.5)),
    ({"y": np.array([1, 2])}, {"y": np.array([1, 2])}, Comparison(0.0)),
    ({"p": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])}, {"p": np.array([[0.7, 0.3], [0.6, 0.4], [0.6, 0.4]])},
     Comparison(0.4, rows=3, agreed=2)),
    ({"y": np.array([1.0])}, {"y": np.array([1.0, 2.0])}, Comparison(None, mismatched=True)),  # another shape
    ({"y": np.array([1.0])}, {"z": np.array([1.0])}, Comparison(None, mismatched=True)),  # another name
    ({"s": np.array([b"a", b"b"])}, {"s": np.array([b"a", b"c"])}, Comparison(None, mismatched=True)),  # strings differ
    ({"s": np.array([b"a"]), "y": np.array([3.0])}, {"s": np.array([b"a"]), "y": np.array([3.0])}, Comparison(0.0)),
    ({"y": np.array([np.nan])}, {"y": np.array([1.0])}, Comparison(float("nan"))),
])
def test_compare(primary: dict, shadow: dict, want: Comparison) -> None:
    got = compare(primary, shadow)
    if want.max_abs_diff is not None and np.isnan(want.max_abs_diff):
        assert got.max_abs_diff is not None and np.isnan(got.max_abs_diff)
        return
    assert got == want


def test_the_routing_table_carries_a_shadow() -> None:
    doc = {"generation": 1, "models": {MODEL: {"labels": {"stable": 1, "candidate": 2}, "weights": {"stable": 100},
                                               "shadow": {"label": "candidate", "percent": 12.5}}}}
    route = parse_table(doc).models[MODEL]
    assert route.shadow is not None and (route.shadow.label, route.shadow.percent, route.shadow.source) == (
        "candidate", 12.5, "stable")
    assert route.as_json()["shadow"] == {"label": "candidate", "percent": 12.5, "source": "stable"}
    for bad in ({"label": "nope", "percent": 10}, {"label": "candidate", "percent": 101}, {"percent": 10},
                {"label": "candidate", "percent": True}, {"label": "candidate", "extra": 1}):
        doc["models"][MODEL]["shadow"] = bad
        with pytest.raises(ServingError):
            parse_table(doc)


@pytest.fixture(scope="module")
def shadowed(start_server, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("shadowed")
    (d / "models.config").write_text(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{models_dir / MODEL}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }\n')
    (d / "routing.json").write_text(json.dumps({"generation": 1, "models": {MODEL: {
        "labels": {"stable": 1, "candidate": 2}, "weights": {"stable": 100},
        "shadow": {"label": "candidate", "percent": 100}}}}))
    (d / "monitoring.config").write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    return start_server([f"--model_config_file={d / 'models.config'}", f"--routing_config_file={d / 'routing.json'}",
                         f"--monitoring_config_file={d / 'monitoring.config'}"])


def test_users_get_the_stable_answers_and_the_candidate_is_compared_on_the_same_inputs(shadowed) -> None:  # type: ignore[no-untyped-def]
    url = f"{shadowed.url}/v1/models/{MODEL}:predict"
    for x in (0.0, 2.0, 4.0):
        r = requests.post(url, json={"instances": [x]}, timeout=30)
        assert r.status_code == 200 and r.headers["X-Model-Version"] == "1" and r.headers["X-Model-Label"] == "stable"
        assert r.json()["predictions"] == [0.5 * x + 2.0]  # the stable version's answer, never the shadow's
    compared = wait_for(lambda: shadowed.metric("modelserver_shadow_requests_total", model=MODEL, version="2",
                                                result="compared") >= 3, what="three shadow comparisons")
    assert compared
    # |(x + 3) - (0.5x + 2)| = 1 + 0.5x: 1, 2 and 4, each in the bucket (1, 10]
    assert shadowed.metric("modelserver_shadow_max_abs_diff_bucket", model=MODEL, version="2", le="1.0") == 1
    assert shadowed.metric("modelserver_shadow_max_abs_diff_bucket", model=MODEL, version="2", le="10.0") == 3
    assert shadowed.metric("modelserver_shadow_latency_ratio_count", model=MODEL, version="2") == 3
    # a request that names the candidate itself is an answer of its own, never mirrored
    r = requests.post(f"{shadowed.url}/v1/models/{MODEL}/labels/candidate:predict", json={"instances": [1.0]}, timeout=30)
    assert r.status_code == 200 and r.json()["predictions"] == [4.0]
    assert shadowed.metric("modelserver_shadow_requests_total", model=MODEL, version="2") == 3
