"""The Deployment controller's decisions (localcluster.rollout): kube-controller-manager's arithmetic,
table-driven, and whole rolling updates simulated to convergence."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from localcluster import rollout
from localcluster.rollout import HASH_LABEL, Step

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("surge", "unavailable", "desired", "expected"), [
    (None, None, 4, (1, 1)),          # the defaults, 25% each: surge rounds up, unavailable down
    (None, None, 1, (1, 0)),
    ("25%", "25%", 10, (3, 2)),
    ("50%", "50%", 3, (2, 1)),
    (0, 0, 3, (0, 1)),                # both 0: one may be unavailable
    (1, 0, 1, (1, 0)),                # the operator's choice
    (0, 1, 2, (0, 1)),
    ("0%", "0%", 5, (0, 1)),
    (2, "100%", 3, (2, 3)),
])
def test_fenceposts(surge: object, unavailable: object, desired: int, expected: tuple[int, int]) -> None:
    assert rollout.resolve_fenceposts(surge, unavailable, desired) == expected


@pytest.mark.parametrize("bad", ["abc", "25", "-1%", "%", True, 1.5])
def test_fenceposts_reject_bad_values(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid value"):
        rollout.resolve_fenceposts(bad, 0, 3)


@pytest.mark.parametrize(("desired", "surge", "all_replicas", "new", "expected"), [
    (3, 1, 3, 0, 1),    # 3 old pods, room for one more
    (3, 1, 4, 1, 1),    # at desired + surge: wait
    (3, 1, 3, 1, 2),    # an old one went: one more new
    (3, 0, 3, 0, 0),    # no surge: old pods must go first
    (3, 3, 3, 0, 3),    # surge covers the whole new set
    (3, 1, 1, 1, 3),    # plain scale-up: straight to desired
    (1, 1, 3, 3, 1),    # plain scale-down
    (0, 1, 0, 0, 0),
])
def test_new_replicaset_replicas(desired: int, surge: int, all_replicas: int, new: int, expected: int) -> None:
    assert rollout.new_rs_replicas(desired, surge, all_replicas, new) == expected


@pytest.mark.parametrize(("desired", "unavailable", "all_replicas", "new", "new_available", "olds", "expected"), [
    (3, 0, 4, 1, 1, [(3, 3)], [2]),           # the new pod is available: one old may go
    (3, 0, 4, 1, 0, [(3, 3)], [3]),           # not yet available: keep every old pod
    (3, 1, 3, 0, 0, [(3, 3)], [2]),           # maxUnavailable 1: one old goes before any new exists
    (3, 0, 4, 1, 1, [(2, 0), (1, 1)], [1, 1]),  # unhealthy old pods go first, within the budget (1 here)
    (3, 1, 4, 1, 1, [(2, 0), (1, 1)], [0, 1]),  # a budget of 2: both unhealthy ones, the healthy one stays
    (3, 0, 6, 3, 3, [(3, 3)], [0]),           # the new set is complete: every old pod goes
    (2, 0, 3, 1, 1, [(1, 1), (1, 1)], [0, 1]),  # oldest first
    (3, 0, 3, 3, 3, [(0, 0)], [0]),
])
def test_scale_down_old(desired: int, unavailable: int, all_replicas: int, new: int, new_available: int,
                        olds: list[tuple[int, int]], expected: list[int]) -> None:
    assert rollout.scale_down_old(desired, unavailable, all_replicas, new, new_available, olds) == expected


def deployment(replicas: int = 3, image: str = "v1", surge: object = 1, unavailable: object = 0, **spec: object) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns", "uid": "d-uid", "generation": 1},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}},
                 **spec},
    }


class World:
    """ReplicaSets whose pods all become available one sync after they are asked for."""

    def __init__(self) -> None:
        self.rss: dict[str, dict] = {}
        self.clock = 0

    def apply(self, d: dict, steps: list[Step]) -> None:
        for s in steps:
            if s.action == "create":
                rs = copy.deepcopy(s.manifest)
                rs["metadata"].update(uid=f"rs-{len(self.rss)}", creationTimestamp=f"2026-01-01T00:00:{self.clock:02d}Z")
                self.rss[s.name] = rs
            elif s.action == "scale":
                self.rss[s.name]["spec"]["replicas"] = s.replicas
            else:
                del self.rss[s.name]
        self.clock += 1

    def settle(self) -> None:
        for rs in self.rss.values():
            n = rs["spec"]["replicas"]
            rs["status"] = {"replicas": n, "readyReplicas": n, "availableReplicas": n}

    def totals(self) -> tuple[int, int]:
        return (sum(r.get("status", {}).get("replicas", 0) for r in self.rss.values()),
                sum(r.get("status", {}).get("availableReplicas", 0) for r in self.rss.values()))


def converge(d: dict, world: World, limit: int = 50) -> list[tuple[int, int]]:
    seen = []
    for _ in range(limit):
        steps = rollout.plan_deployment(d, list(world.rss.values()))
        if not steps:
            return seen
        world.apply(d, steps)
        world.settle()
        seen.append(world.totals())
    raise AssertionError("did not converge")


@pytest.mark.parametrize(("replicas", "surge", "unavailable"), [(3, 1, 0), (3, 0, 1), (4, "25%", "25%"), (5, 2, 2), (1, 1, 0)])
def test_a_rolling_update_stays_within_its_bounds(replicas: int, surge: object, unavailable: object) -> None:
    world = World()
    d = deployment(replicas, "v1", surge, unavailable)
    converge(d, world)
    assert [r["spec"]["replicas"] for r in world.rss.values()] == [replicas]
    d2 = deployment(replicas, "v2", surge, unavailable)
    max_surge, max_unavailable = rollout.resolve_fenceposts(surge, unavailable, replicas)
    history = converge(d2, world)
    assert history, "a new template must roll"
    for total, available in history:
        assert total <= replicas + max_surge
        assert available >= replicas - max_unavailable
    new = rollout.current_replicaset(d2, list(world.rss.values()))
    assert new is not None and new["spec"]["replicas"] == replicas
    assert sorted(r["spec"]["replicas"] for r in world.rss.values()) == [0, replicas]
    assert new["metadata"]["annotations"][rollout.REVISION_ANNOTATION] == "2"
    # the pods carry the template hash, in their labels and the ReplicaSet's selector
    assert new["spec"]["template"]["metadata"]["labels"][HASH_LABEL] == new["spec"]["selector"]["matchLabels"][HASH_LABEL]


def test_scaling_follows_spec_replicas_both_ways() -> None:
    world = World()
    for replicas in (1, 3, 1, 0, 2):
        converge(deployment(replicas), world)
        assert [r["spec"]["replicas"] for r in world.rss.values()] == [replicas]


def test_recreate_removes_every_old_pod_first() -> None:
    world = World()
    d = deployment(2, "v1", strategy={"type": "Recreate"})
    converge(d, world)
    d2 = deployment(2, "v2", strategy={"type": "Recreate"})
    steps = rollout.plan_deployment(d2, list(world.rss.values()))
    assert [(s.action, s.replicas) for s in steps] == [("scale", 0)]
    world.apply(d2, steps)
    assert rollout.plan_deployment(d2, list(world.rss.values())) == []  # old pods still running: wait
    world.settle()
    assert [(s.action, s.replicas) for s in rollout.plan_deployment(d2, list(world.rss.values()))] == [("create", 2)]


def test_history_beyond_the_limit_is_deleted() -> None:
    world = World()
    for image in ("v1", "v2", "v3", "v4"):
        converge(deployment(1, image, revisionHistoryLimit=1), world)
    assert len(world.rss) == 2  # the current one and one old


def test_a_paused_deployment_is_left_alone() -> None:
    assert rollout.plan_deployment(deployment(paused=True), []) == []


def rs_with(d: dict, replicas: int, ready: int, available: int, image: str | None = None) -> dict:
    template_of = deployment(image=image) if image else d
    rs = rollout.replicaset_for(template_of, rollout.template_hash(template_of["spec"]["template"]), 1, replicas)
    rs["status"] = {"replicas": replicas, "readyReplicas": ready, "availableReplicas": available}
    return rs


@pytest.mark.parametrize(("rss", "expected", "available", "progressing"), [
    ([(3, 3, 3, None)], {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3, "unavailableReplicas": 0},
     "True", "NewReplicaSetAvailable"),
    ([(3, 2, 2, None)], {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 1},
     "False", "ReplicaSetUpdated"),
    ([(1, 1, 1, None), (3, 3, 3, "old")], {"replicas": 4, "updatedReplicas": 1, "readyReplicas": 4, "availableReplicas": 4,
                                           "unavailableReplicas": 0}, "True", "ReplicaSetUpdated"),
])
def test_status(rss: list[tuple], expected: dict, available: str, progressing: str) -> None:
    d = deployment(3)
    status = rollout.deployment_status(d, [rs_with(d, *r) for r in rss], NOW)
    assert {k: status[k] for k in expected} == expected
    assert status["observedGeneration"] == 1
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Available"]["status"] == available
    assert conds["Progressing"]["reason"] == progressing


def test_progress_deadline() -> None:
    d = deployment(3, progressDeadlineSeconds=60)
    rss = [rs_with(d, 3, 1, 1)]
    d["status"] = rollout.deployment_status(d, rss, NOW)
    assert rollout.progress_deadline_in(d, NOW) == pytest.approx(61)
    later = rollout.deployment_status(d, rss, NOW + dt.timedelta(seconds=30))
    assert {c["type"]: c for c in later["conditions"]}["Progressing"]["reason"] == "ReplicaSetUpdated"
    d["status"] = later
    stuck = rollout.deployment_status(d, rss, NOW + dt.timedelta(seconds=61))
    cond = {c["type"]: c for c in stuck["conditions"]}["Progressing"]
    assert (cond["status"], cond["reason"]) == ("False", "ProgressDeadlineExceeded")


def test_an_unchanged_status_is_identical() -> None:
    """Syncing again without changes writes nothing (no event storm for the operator)."""
    d = deployment(3)
    rss = [rs_with(d, 3, 3, 3)]
    d["status"] = rollout.deployment_status(d, rss, NOW)
    assert rollout.deployment_status(d, rss, NOW + dt.timedelta(seconds=5)) == d["status"]
