"""Where labels and weights may point (modeldeploy.decisions.traffic), table-driven: new versions load first,
labels and weights move only once every ready pod serves their versions, pushes go to pods that
lag, old versions unload once the table is live everywhere, a failed canary never gets traffic,
and without pod access the ConfigMap carries the table."""

from __future__ import annotations

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions.traffic import PodReport, Table, decide, spec_table, summary


def spec(labels: dict[str, int], versions: list[int], canary: int | None = None) -> api.ModelDeploymentSpec:
    body: dict = {"model": {"storage": {"hostPath": {"path": "/m"}}, "versions": versions}, "versionLabels": labels}
    if canary is not None:
        body["traffic"] = {"canary": canary}
    return api.ModelDeploymentSpec.model_validate(body)


def pod(name: str, gen: int, labels: dict[str, int] | None = None, **versions: str) -> PodReport:
    return PodReport(name, {int(k[1:]): v for k, v in versions.items()}, {}, gen, labels=labels or {})


OLD = Table(3, {"stable": 3}, {})


def test_spec_table() -> None:
    t = spec_table(spec({"stable": 3, "canary": 4}, [3, 4], canary=10), 7)
    assert (t.generation, dict(t.weights)) == (7, {"stable": 90, "canary": 10})
    assert t.document("m")["models"]["m"] == {"labels": {"canary": 4, "stable": 3}, "weights": {"stable": 90, "canary": 10}}
    assert list(t.document("m")["models"]["m"]["weights"]) == ["stable", "canary"]  # stable's buckets first
    assert not spec_table(spec({"stable": 3}, [3]), 1).weights  # no traffic: no split, as TF Serving
    assert summary(t) == "canary=10%,stable=90%" and summary(None) == ""


def test_a_new_version_loads_first_and_the_labels_wait_for_every_pod() -> None:
    s = spec({"stable": 3, "canary": 4}, [3, 4], canary=10)
    d = decide(s, 5, OLD, [pod("a", 3, v3="AVAILABLE", v4="AVAILABLE"), pod("b", 3, v3="AVAILABLE", v4="LOADING")])
    assert d.table is OLD and d.load_versions == (3, 4) and not d.push_to
    assert d.waiting == ("version 4 loading on b",) and not d.settled
    d = decide(s, 5, OLD, [pod("a", 3, v3="AVAILABLE", v4="AVAILABLE"), pod("b", 3, v3="AVAILABLE", v4="AVAILABLE")])
    assert d.table.generation == 5 and dict(d.table.weights) == {"stable": 90, "canary": 10}
    assert d.push_to == ("a", "b") and d.live == 0 and not d.settled


def test_a_label_flip_between_loaded_versions_moves_at_once_and_old_versions_go_once_live() -> None:
    s = spec({"stable": 4}, [4])  # promote: stable to 4, version 3 no longer listed
    in_force = Table(5, {"stable": 3, "canary": 4}, {})
    both = dict(v3="AVAILABLE", v4="AVAILABLE")
    old, new = {"stable": 3, "canary": 4}, {"stable": 4}
    d = decide(s, 6, in_force, [pod("a", 5, old, **both), pod("b", 5, old, **both)])
    assert d.table.labels == {"stable": 4} and d.push_to == ("a", "b")
    assert d.load_versions == (3, 4)  # 3 stays loaded until the flip is live on every pod
    d = decide(s, 6, Table(6, {"stable": 4}, {}), [pod("a", 6, new, **both), pod("b", 5, old, **both)])
    assert d.push_to == ("b",) and d.live == 1 and d.load_versions == (3, 4)
    d = decide(s, 6, Table(6, {"stable": 4}, {}), [pod("a", 6, new, **both), pod("b", 6, new, **both)])
    assert d.settled and d.load_versions == (4,)


def test_a_canary_that_fails_to_load_never_gets_traffic() -> None:
    s = spec({"stable": 3, "canary": 4}, [3, 4], canary=50)
    bad = PodReport("a", {3: "AVAILABLE", 4: "END"}, {4: "Warmup request 0 failed"}, 3)
    d = decide(s, 8, OLD, [bad])
    assert d.table is OLD and d.failed == ("version 4 failed to load on a: Warmup request 0 failed",)


def test_an_unreachable_pod_holds_the_table_and_no_pods_means_the_spec_at_once() -> None:
    s = spec({"stable": 3, "canary": 4}, [3, 4], canary=10)
    d = decide(s, 5, OLD, [pod("a", 3, v3="AVAILABLE", v4="AVAILABLE"), PodReport("b", unreachable="timed out")])
    assert d.table is OLD and d.waiting == ("b unreachable: timed out",) and d.push_to == ()
    d = decide(s, 5, None, [])
    assert d.table.generation == 5 and d.settled and d.load_versions == (3, 4)


def test_without_pod_access_the_configmap_carries_the_table() -> None:
    s = spec({"stable": 4}, [4])
    d = decide(s, 6, OLD, None)  # the servers keep version 3 while their stable label points at it
    assert d.delivery == "ConfigMap" and d.table.labels == {"stable": 4} and d.load_versions == (4,)


def test_nothing_moved_keeps_the_generation_and_pushes_nothing() -> None:
    s = spec({"stable": 3}, [3])
    d = decide(s, 9, OLD, [pod("a", 3, v3="AVAILABLE")])
    assert d.table.generation == 3 and d.settled and not d.push_to
    assert Table.from_status(d.table.as_status()) == d.table
