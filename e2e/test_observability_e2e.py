"""Tracing and payload logging the operator sets up, end to end (`make e2e`): a ModelDeployment
with spec.observability.tracing and spec.logging; a request through its Service with a client's
traceparent arrives at an OTLP receiver as a span of the client's trace (with the pod's resource
attributes), and at a CloudEvents sink as a request and a response event carrying that trace id.
The receivers run in the test process on 127.0.0.1, which the local cluster's pods reach (they
are processes of this machine): on a real cluster the test is skipped."""

from __future__ import annotations

import pytest
import requests
from e2e_support import READY_TIMEOUT, Cluster, OperatorProcess, condition, half_plus_two, wait_for
from otel_sinks import EventSink, OtlpGrpcReceiver, attributes

pytestmark = pytest.mark.e2e

TRACE, PARENT = "5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7"


def test_traced_and_logged_model_deployment(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    if cluster.local is None:
        pytest.skip("the OTLP receiver and the sink run in the test process: the local cluster only")
    with OtlpGrpcReceiver() as rx, EventSink() as sink:
        cluster.create(half_plus_two("observed", namespace,
                                     observability={"tracing": {"endpoint": rx.endpoint, "protocol": "grpc"}},
                                     logging={"url": sink.url, "mode": "all"}))
        wait_for(lambda: condition(cluster.md(namespace, "observed"), "Ready").get("status") == "True",
                 READY_TIMEOUT, "observed Ready")
        r = requests.post(f"{cluster.service_url(namespace, 'observed')}/v1/models/half_plus_two:predict",
                          json={"instances": [1.0, 2.0]}, headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
                          timeout=30)
        assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}

        def span() -> tuple[dict, object] | None:
            with rx._lock:
                return next(((res, s) for res, s in rx.spans if s.trace_id.hex() == TRACE
                             and s.parent_span_id.hex() == PARENT), None)

        resource, root = wait_for(span, 60, "the request's span at the OTLP receiver")
        (pod,) = cluster.pods(namespace, "observed")
        assert resource["service.name"] == "half_plus_two"
        assert (resource["k8s.namespace.name"], resource["k8s.pod.name"], resource["modeldeploy.name"]) == (
            namespace, pod["metadata"]["name"], "observed")
        assert attributes(root)["model.name"] == "half_plus_two" and attributes(root)["modelserver.status"] == "OK"

        events = wait_for(lambda: sink.events if len(sink.events) >= 2 else None, 60, "2 payload events")
        assert {e["headers"]["ce-type"] for e in events} == {"org.modeldeploy.inference.request",
                                                            "org.modeldeploy.inference.response"}
        assert {e["headers"]["ce-traceid"] for e in events} == {TRACE}
        assert [e["body"] for e in events if e["headers"]["ce-type"].endswith("request")] == [
            b'{"instances": [1.0, 2.0]}']
