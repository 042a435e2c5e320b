"""Where labels and traffic weights may point now, and on which pods that is live: pure decisions.

The spec says where `versionLabels` and `traffic` should end up; this module decides what the
routing table in force may be at this moment (server_image/modelserver/routing.py serves it), in
the order that loses no request (KServe's raw-mode canary sends traffic to pods before they can
serve it; ours must not):

1. new versions are loaded first: the model config lists the spec's versions and every version
   the table in force still points at;
2. labels and weights move only once every version the new table names is AVAILABLE on every
   ready pod (each pod asked directly, on its admin port); until then the table in force stays,
   and status says which pods lag and why (still loading, or failed: a canary that fails to load
   never receives traffic);
3. the new table is pushed to every ready pod and confirmed per pod (the ConfigMap's routing.json
   carries it too, for new and restarted pods, and for a pod that missed a push);
4. a version stays in the model config while a label on any pod still points at it (and the
   server itself never unloads a labelled version), so it is unloaded only once no label needs it.

An operator that cannot reach the pods (running outside the cluster) falls back to the ConfigMap:
the table goes into routing.json at once (each server applies it when its versions are AVAILABLE,
by TF Serving's label rule), and status says that delivery is by ConfigMap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions.records import PodReport, VersionReport

STABLE, CANARY = "stable", "canary"
# A rollout's table: labels, weights, and the shadow (None: no requests mirrored)
Override = tuple[Mapping[str, int], Mapping[str, int], Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True)
class Table:
    """A routing table for one model (the server's routing document, for one model)."""

    generation: int
    labels: Mapping[str, int]
    weights: Mapping[str, int] = field(default_factory=dict)
    shadow: Mapping[str, Any] | None = None  # {"label", "percent", "source"}: mirrored requests (a rollout's)

    def same_routes(self, other: Table | None) -> bool:
        return (other is not None and dict(self.labels) == dict(other.labels) and dict(self.weights) == dict(other.weights)
                and (dict(self.shadow) if self.shadow else None) == (dict(other.shadow) if other.shadow else None))

    def with_generation(self, generation: int) -> Table:
        return Table(generation, self.labels, self.weights, self.shadow)

    def versions(self) -> set[int]:
        return set(self.labels.values())

    def document(self, model: str) -> dict[str, Any]:
        """The server's routing document (routing.json, and the admin push)."""
        weights = [(k, w) for k, w in self.weights.items()]
        weights.sort(key=lambda kw: (kw[0] != STABLE, kw[0] == CANARY, kw[0]))  # stable first, canary last
        entry: dict[str, Any] = {"labels": dict(sorted(self.labels.items())), "weights": dict(weights)}
        if self.shadow:
            entry["shadow"] = dict(self.shadow)
        return {"generation": self.generation, "models": {model: entry}}

    def as_status(self) -> dict[str, Any]:
        out = {"generation": self.generation, "labels": dict(self.labels), "weights": dict(self.weights)}
        if self.shadow:
            out["shadow"] = dict(self.shadow)
        return out

    @staticmethod
    def from_status(s: Mapping[str, Any] | None) -> Table | None:
        if not s or "generation" not in s:
            return None
        try:
            shadow = s.get("shadow")
            return Table(int(s["generation"]), {str(k): int(v) for k, v in (s.get("labels") or {}).items()},
                         {str(k): int(v) for k, v in (s.get("weights") or {}).items()},
                         dict(shadow) if isinstance(shadow, Mapping) else None)
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Decision:
    table: Table  # the table to put in force now (render into routing.json, push to pods)
    load_versions: tuple[int, ...] | None  # versions the model config lists (None: the spec's policy)
    push_to: tuple[str, ...] = ()  # ready pods whose table is older than `table`
    waiting: tuple[str, ...] = ()  # why the spec's table is not in force yet (per pod)
    failed: tuple[str, ...] = ()  # versions the spec's table needs that failed to load, with why
    delivery: str = "Push"  # Push | ConfigMap
    live: int = 0  # ready pods whose table in force is `table` (or newer)
    ready: int = 0

    @property
    def settled(self) -> bool:
        """The spec's table is live on every ready pod."""
        return not self.waiting and not self.push_to and self.live == self.ready


def spec_table(spec: api.ModelDeploymentSpec, generation: int) -> Table:
    """The table the spec asks for: its labels, and with traffic.canary the split of the requests
    that name no label (stable gets the rest); with `traffic` or `rollout` but no canary share, all
    of them to stable; with neither, no split (TF Serving's latest version)."""
    labels = dict(spec.version_labels or {})
    weights: dict[str, int] = {}
    canary = spec.traffic.canary if spec.traffic else 0
    if STABLE in labels and CANARY in labels and canary > 0:
        weights = {STABLE: 100 - canary, CANARY: canary}
    elif STABLE in labels and (spec.traffic is not None or spec.rollout is not None):
        weights = {STABLE: 100}  # a split (or a rollout) is asked for: unlabelled requests follow stable
    return Table(generation, labels, weights)


def decide(spec: api.ModelDeploymentSpec, generation: int, in_force: Table | None,
           pods: Sequence[PodReport] | None, override: Override | None = None,
           unload: frozenset[int] = frozenset()) -> Decision:
    """The table to put in force, the versions to load, and where to push (`pods`: the ready
    pods' reports; None when the pods cannot be asked, so delivery is by ConfigMap). `override`
    (labels, weights, shadow) replaces the spec's table while a progressive rollout runs (rollout.py);
    `unload`: spec versions to drop anyway (a rolled-back one) unless a label still points at them."""
    wanted = (spec_table(spec, generation) if override is None else
              Table(generation, dict(override[0]), dict(override[1]), dict(override[2]) if override[2] else None))
    if in_force is not None and wanted.same_routes(in_force):
        wanted = wanted.with_generation(in_force.generation)  # nothing moved: keep its generation
    elif in_force is not None and wanted.generation <= in_force.generation:
        # a new table without a new spec generation (a rollout step): generations only go up
        wanted = wanted.with_generation(in_force.generation + 1)
    spec_versions = set(spec.model.versions or ()) - unload
    if pods is None:  # each server keeps a labelled version loaded until its label moves
        return Decision(wanted, _versions(spec, spec_versions | wanted.versions()), delivery="ConfigMap")
    reachable = [p for p in pods if not p.unreachable]
    missing: list[str] = []
    failed: list[str] = []
    for v in sorted(wanted.versions() | spec_versions):
        for p in reachable:
            state = p.versions.get(v)
            if state == "AVAILABLE":
                continue
            if state == "END" and p.errors.get(v):
                failed.append(f"version {v} failed to load on {p.pod}: {p.errors[v]}")
            elif v in wanted.versions():  # a version no label names does not hold the labels back
                missing.append(f"version {v} {(state or 'not loaded').lower()} on {p.pod}")
    unreachable = [f"{p.pod} unreachable: {p.unreachable}" for p in pods if p.unreachable]
    labelled_failed = [f for f in failed if any(f.startswith(f"version {v} ") for v in wanted.versions())]
    if not missing and not labelled_failed and not unreachable:
        table = wanted
    elif in_force is not None:
        table = in_force
    else:  # no table known yet: the labels whose versions serve everywhere, no split until all do
        table = Table(wanted.generation, {k: v for k, v in wanted.labels.items() if _everywhere(v, reachable)})
    live = sum(1 for p in reachable if p.generation >= table.generation)
    push = tuple(p.pod for p in reachable if p.generation < table.generation)
    # a version stays listed while the table to be in force, or any pod's labels, still point at it
    keep = spec_versions | wanted.versions() | table.versions() | {v for p in reachable for v in p.labels.values()}
    return Decision(table, _versions(spec, keep), push, tuple(missing + unreachable), tuple(failed), "Push",
                    live, len(pods))


def _everywhere(version: int, pods: Sequence[PodReport]) -> bool:
    return all(p.versions.get(version) == "AVAILABLE" for p in pods)


def _versions(spec: api.ModelDeploymentSpec, versions: set[int]) -> tuple[int, ...] | None:
    """The model config's versions: the spec's list plus what labels need (None: the spec uses
    the latest policy, which labels cannot widen)."""
    if spec.model.versions is None:
        return None
    return tuple(sorted(versions))


def summary(table: Table | None) -> str:
    """`canary=10%` for the printer column (or `stable=100%`, or empty with no split)."""
    if table is None or not table.weights:
        return ""
    return ",".join(f"{k}={w}%" for k, w in sorted(table.weights.items()) if w)


def version_reports(pods: Sequence[PodReport], table: Table) -> dict[int, VersionReport]:
    """Per-version states over the ready pods, for status: Available when every pod that answered
    serves it, Failed (with the first error) when one failed to load it, else Loading; with the
    labels the table in force gives it."""
    answered = [p for p in pods if not p.unreachable]
    labels: dict[int, list[str]] = {}
    for label, v in sorted(table.labels.items()):
        labels.setdefault(v, []).append(label)
    out: dict[int, VersionReport] = {}
    for v in sorted({v for p in answered for v in p.versions}):
        states = [p.versions.get(v) for p in answered]
        errors = [p.errors[v] for p in answered if p.errors.get(v)]
        if errors:
            state, message = "Failed", errors[0]
        elif all(s == "AVAILABLE" for s in states):
            state, message = "Available", ""
        elif any(s in ("START", "LOADING") for s in states):
            state, message = "Loading", ""
        elif all(s in ("END", "UNLOADING") for s in states):
            state, message = "Unloaded", ""
        else:
            state, message = "Loading", ""
        warmed = next((p.warmup[v] for p in answered if p.warmup.get(v)), None)
        fetched = [p.downloads[v] for p in answered if p.downloads.get(v)]
        taken = [f["download"] for f in fetched if f.get("download")]
        out[v] = VersionReport(state, message, tuple(labels.get(v, ())), dict(warmed) if warmed else None,
                               source=str(fetched[0]["source"]) if fetched else "",
                               download=dict(max(taken, key=lambda d: d["seconds"])) if taken else None)
    return out
