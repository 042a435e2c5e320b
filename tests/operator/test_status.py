"""The pure status decisions: conditions, transition times, version states."""

from __future__ import annotations

import pytest
from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions.status import (
    Problem,
    compute_status,
    conditions_for,
    keep_transition_times,
    rollout_of,
)

SPEC = api.ModelDeploymentSpec.model_validate(
    {"model": {"storage": {"pvc": {"claimName": "m"}}, "versions": [1, 2]}, "versionLabels": {"stable": 1}}
)


def deployment(wanted: int, ready: int, updated: int, total: int, gen: int = 2, observed: int = 2, deadline: bool = False) -> dict:
    conditions = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}] if deadline else []
    return {"metadata": {"generation": gen}, "spec": {"replicas": wanted},
            "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated, "replicas": total, "conditions": conditions}}


def by_type(conds: list[dict]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conds}


def test_complete_rollout_is_ready() -> None:
    c = by_type(conditions_for(None, rollout_of(deployment(2, 2, 2, 2)), 3))
    assert c == {"Ready": ("True", "Available"), "Progressing": ("False", "RolloutComplete"), "Degraded": ("False", "AsExpected"),
                 "Reconciling": ("False", "RolloutComplete"), "Stalled": ("False", "AsExpected")}


def test_rolling_update_is_progressing_and_old_pods_keep_serving() -> None:
    c = by_type(conditions_for(None, rollout_of(deployment(2, 2, 1, 3)), 3))
    assert c["Ready"] == ("False", "RollingOut") and c["Progressing"] == ("True", "RollingOut")
    c = by_type(conditions_for(None, rollout_of(deployment(2, 2, 2, 2, gen=3, observed=2)), 3))
    assert c["Progressing"][0] == "True"  # the controller has not seen the new spec yet


def test_not_ready_pods_and_deadline_exceeded() -> None:
    assert by_type(conditions_for(None, rollout_of(deployment(2, 0, 2, 2)), 1))["Ready"] == ("False", "PodsNotReady")
    c = by_type(conditions_for(None, rollout_of(deployment(2, 0, 1, 2, deadline=True)), 1))
    assert c["Degraded"] == ("True", "ProgressDeadlineExceeded") and c["Progressing"][0] == "False"


def test_problems_are_degraded_and_not_ready() -> None:
    c = by_type(conditions_for(Problem("StorageNotFound", "pvc m missing"), None, 1))
    assert c == {"Ready": ("False", "StorageNotFound"), "Progressing": ("False", "StorageNotFound"), "Degraded": ("True", "StorageNotFound"),
                 "Reconciling": ("False", "StorageNotFound"), "Stalled": ("True", "StorageNotFound")}


def test_transition_time_changes_only_with_the_status() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "T0"}, {"type": "Degraded", "status": "False", "lastTransitionTime": "T0"}]
    new = keep_transition_times([{"type": "Ready", "status": "True"}, {"type": "Degraded", "status": "True"}], old, "T1")
    assert [c["lastTransitionTime"] for c in new] == ["T0", "T1"]


def test_compute_status_fields() -> None:
    st = compute_status(spec=SPEC, name="clf", generation=4, deployment=deployment(1, 1, 1, 1), problem=None, previous=None, config_hash="abc", now="T")
    assert st["observedGeneration"] == 4 and st["configHash"] == "abc" and st["readyReplicas"] == 1
    assert st["versions"] == [{"version": 1, "state": "Available", "labels": ["stable"]}, {"version": 2, "state": "Available"}]
    assert st["versionsSummary"] == "1,2" and st["labelsSummary"] == "stable=1" and st["modelName"] == "clf"
    pending = compute_status(spec=SPEC, name="clf", generation=1, deployment=None, problem=Problem("ApplyFailed", "x"), previous=None, config_hash=None, now="T")
    assert {v["state"] for v in pending["versions"]} == {"Pending"} and pending["readyReplicas"] == 0
    loading = compute_status(spec=SPEC, name="clf", generation=1, deployment=deployment(1, 0, 1, 1), problem=None, previous=None, config_hash=None, now="T")
    assert {v["state"] for v in loading["versions"]} == {"Loading"}
    surging = compute_status(spec=SPEC, name="clf", generation=1, deployment=deployment(2, 2, 1, 3), problem=None, previous=None, config_hash=None, now="T")
    assert (surging["desiredReplicas"], surging["replicas"], surging["readyReplicas"]) == (2, 3, 2)


def test_server_reports_refine_version_states() -> None:
    from modeldeploy.clients import servers
    from modeldeploy.decisions.records import VersionReport

    served = servers.parse_status({"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "2", "state": "END", "status": {"error_code": "NOT_FOUND", "error_message": "no SavedModel"}},
        {"version": "x", "state": "AVAILABLE"},
    ]})
    assert served == {1: VersionReport("Available"), 2: VersionReport("Failed", "no SavedModel")}
    assert servers.parse_status({"model_version_status": [{"version": "4", "state": "END", "status": {"error_code": "OK"}}]})[4].state == "Unloaded"
    st = compute_status(spec=SPEC, name="clf", generation=1, deployment=deployment(1, 1, 1, 1), problem=None, previous=None,
                        config_hash=None, now="T", served=served)
    assert st["versions"] == [{"version": 1, "state": "Available", "labels": ["stable"]},
                              {"version": 2, "state": "Failed", "message": "no SavedModel"}]
    latest = api.ModelDeploymentSpec.model_validate({"model": {"storage": {"pvc": {"claimName": "m"}}}})
    st = compute_status(spec=latest, name="clf", generation=1, deployment=deployment(1, 1, 1, 1), problem=None, previous=None,
                        config_hash=None, now="T", served={7: VersionReport("Available")})
    assert st["versions"] == [{"version": 7, "state": "Available"}]


def test_unreachable_server_gives_none() -> None:
    import socket

    from modeldeploy.clients import servers

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert servers.fetch_status(f"http://127.0.0.1:{port}", "m", timeout=1) is None


def test_a_problem_still_counts_the_pods_of_an_earlier_generation() -> None:
    st = compute_status(spec=None, name="clf", generation=3, deployment=deployment(2, 2, 2, 2, gen=2, observed=2),
                        problem=Problem("InvalidSpec", "bad"), previous=None, config_hash="old", now="T")
    assert st["readyReplicas"] == 2 and st["replicas"] == 2 and st["configHash"] == "old"
    assert by_type(st["conditions"])["Ready"] == ("False", "InvalidSpec") and "versions" not in st


def test_a_problem_keeps_describing_what_the_running_pods_serve() -> None:
    good = compute_status(spec=SPEC, name="clf", generation=2, deployment=deployment(2, 2, 2, 2), problem=None,
                          previous=None, config_hash="old", now="T")
    broken = api.ModelDeploymentSpec.model_validate(
        {"model": {"storage": {"pvc": {"claimName": "gone"}}, "versions": [7]}, "versionLabels": {"stable": 7}})
    for spec, problem in ((None, Problem("InvalidSpec", "bad")), (broken, Problem("StorageNotFound", "gone"))):
        st = compute_status(spec=spec, name="clf", generation=3, deployment=deployment(2, 2, 2, 2), problem=problem,
                            previous=good, config_hash="old", now="T")
        assert st["versions"] == good["versions"] and st["labelsSummary"] == "stable=1" and st["versionsSummary"] == "1,2"
        assert st["modelName"] == "clf" and by_type(st["conditions"])["Degraded"] == ("True", problem.reason)
    # with nothing running (a first generation that never applied), status shows the spec as pending
    st = compute_status(spec=broken, name="clf", generation=1, deployment=None, problem=Problem("StorageNotFound", "gone"),
                        previous=None, config_hash=None, now="T")
    assert st["versions"] == [{"version": 7, "state": "Pending", "labels": ["stable"]}]


def test_transient_error_backoff_doubles_up_to_a_minute() -> None:
    from modeldeploy.controller.workqueue import backoff  # the work queue backs off failed runs

    assert [backoff(1, r) for r in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(0.5, 0) == 0.5 and backoff(0.5, 100) == 60


def kstatus(obj: dict) -> str:
    """sigs.k8s.io/cli-utils kstatus' generic rules for a custom resource (what Flux and kpt apply)."""
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"]["generation"]:
        return "InProgress"
    conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
    if conds.get("Reconciling") == "True":
        return "InProgress"
    if conds.get("Stalled") == "True":
        return "Failed"
    return "Current"


def test_kstatus_tools_read_the_truth() -> None:
    cases = [
        (None, None, "InProgress"),  # Deployment being created
        (None, deployment(2, 2, 2, 2), "Current"),
        (None, deployment(2, 1, 2, 2), "InProgress"),  # pods not ready
        (None, deployment(2, 2, 1, 3), "InProgress"),  # rolling out
        (None, deployment(2, 0, 1, 2, deadline=True), "Failed"),
        (Problem("InvalidSpec", "x"), deployment(2, 2, 2, 2), "Failed"),
        (Problem("StorageNotFound", "x"), None, "Failed"),
    ]
    for problem, dep, want in cases:
        st = compute_status(spec=SPEC, name="clf", generation=2, deployment=dep, problem=problem, previous=None, config_hash=None, now="T")
        assert kstatus({"metadata": {"generation": 2}, "status": st}) == want, (problem, dep)


def test_label_moves_the_servers_have_not_applied_keep_progressing() -> None:
    from modeldeploy.clients import servers
    from modeldeploy.decisions.records import VersionReport
    from modeldeploy.decisions.status import pending_labels

    spec = api.ModelDeploymentSpec.model_validate(
        {"model": {"storage": {"pvc": {"claimName": "m"}}, "versions": [1, 2]}, "versionLabels": {"stable": 2, "canary": 2}})
    reports = {1: VersionReport("Available"), 2: VersionReport("Available")}
    behind = servers.with_labels(reports, {"stable": 1, "canary": 2})
    assert behind[1].labels == ("stable",) and behind[2].labels == ("canary",)
    assert pending_labels(spec, behind) == ["stable→2"] and pending_labels(spec, None) == []
    caught_up = servers.with_labels(reports, {"stable": 2, "canary": 2, "gone": 9, "unset": None})
    assert caught_up[2].labels == ("canary", "stable") and pending_labels(spec, caught_up) == []
    st = compute_status(spec=spec, name="clf", generation=2, deployment=deployment(2, 2, 2, 2), problem=None, previous=None,
                        config_hash=None, now="T", served=behind)
    c = by_type(st["conditions"])
    assert c["Ready"] == ("True", "Available") and c["Progressing"] == ("True", "LabelsPending") == c["Reconciling"]
    assert kstatus({"metadata": {"generation": 2}, "status": st}) == "InProgress"
    st = compute_status(spec=spec, name="clf", generation=2, deployment=deployment(2, 2, 2, 2), problem=None, previous=None,
                        config_hash=None, now="T", served=caught_up)
    assert by_type(st["conditions"])["Progressing"] == ("False", "RolloutComplete")


def _pod(name: str, state: dict, last: dict | None = None, deleting: bool = False) -> dict:
    meta = {"name": name, **({"deletionTimestamp": "2026-12-06T00:00:00Z"} if deleting else {})}
    return {"metadata": meta, "status": {"containerStatuses": [
        {"name": "model-server", "state": state, "lastState": last or {}, "restartCount": 2}]}}


CRASH = {"terminated": {"exitCode": 1, "reason": "Error", "message": "a\nlast line", "finishedAt": "T"}}


@pytest.mark.parametrize(("pods", "want"), [
    ([], None),
    ([_pod("p", {"running": {}})], None),
    ([_pod("p", {"running": {}}, CRASH)], None),  # crashed once, runs again: not failing
    ([_pod("p", {"terminated": {"exitCode": 0, "reason": "Completed"}})], None),
    ([_pod("p", {"waiting": {"reason": "ContainerCreating"}})], None),  # on its way
    ([_pod("p", {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}, CRASH)],
     {"pod": "p", "container": "model-server", "reason": "CrashLoopBackOff", "restartCount": 2, "exitCode": 1,
      "message": "a\nlast line", "time": "T"}),
    ([_pod("p", {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}})],
     {"pod": "p", "container": "model-server", "reason": "ImagePullBackOff", "restartCount": 2,
      "message": "pull access denied"}),
    ([_pod("p", CRASH)], {"pod": "p", "container": "model-server", "reason": "Error", "restartCount": 2,
                          "exitCode": 1, "message": "a\nlast line", "time": "T"}),
    ([_pod("p", CRASH, deleting=True)], None),  # going away: its crash is no news
    ([_pod("b", CRASH), _pod("a", {"waiting": {"reason": "ErrImagePull"}})],
     {"pod": "a", "container": "model-server", "reason": "ErrImagePull", "restartCount": 2}),  # first by name
])
def test_a_failing_container_is_found_as_the_kubelet_reports_it(pods: list, want: dict | None) -> None:
    from modeldeploy.decisions.status import container_failure, failure_text

    assert container_failure(pods) == want
    if want and "exitCode" in want:
        assert failure_text(want).endswith(f"{want['reason']} (exit code 1): last line")
