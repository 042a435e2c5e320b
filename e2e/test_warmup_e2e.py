"""Warmup the operator manages, end to end (`make e2e`): a ModelDeployment with `warmup.generate` on a
model that ships no warmup file; its pod turns Ready only after the server replayed the generated
requests, and status shows per version what was replayed and how long it took."""

from __future__ import annotations

import re
import time

import pytest
from e2e_support import READY_TIMEOUT, Cluster, OperatorProcess, condition, half_plus_two, wait_for

pytestmark = pytest.mark.e2e


def test_generated_warmup_gates_readiness_and_shows_in_status(cluster: Cluster, namespace: str,
                                                               operator: OperatorProcess) -> None:
    cluster.create(half_plus_two("warm", namespace, warmup={"enabled": True, "requestIterations": 2,
                                                           "generate": {"batchSizes": [1, 8], "count": 2}}))

    def warmed() -> dict | None:
        obj = cluster.md(namespace, "warm") or {}
        versions = (obj.get("status") or {}).get("versions") or []
        return versions[0] if versions and versions[0].get("warmup") and condition(obj, "Ready").get("status") == "True" else None

    v = wait_for(warmed, READY_TIMEOUT, "Ready with a warmup report")
    # half_plus_two's serving_default is warmed (2 batch sizes x 2), its classify/regress signatures
    # parse tf.Examples with a required feature, so empty generated examples are skipped
    assert v["warmup"]["source"] == "generated" and v["warmup"]["records"] == 4 and v["warmup"]["requests"] == 8
    assert v["warmup"]["seconds"] > 0 and set(v["warmup"].get("skipped", {})) == {"classify", "regress"}
    (pod,) = cluster.pods(namespace, "warm")
    log = cluster.kubectl("-n", namespace, "logs", pod["metadata"]["name"]).stdout
    m = re.search(r"^(\S+ \S+),\d+ INFO .*warmed up \(generated\): 4 record\(s\), 8 request", log, re.M)
    assert m, log
    ready_at = time.mktime(time.strptime(condition(pod, "Ready")["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert ready_at >= int(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")))
    assert cluster.predict(namespace, "warm", "half_plus_two", [1.0, 2.0]) == [2.5, 3.0]
