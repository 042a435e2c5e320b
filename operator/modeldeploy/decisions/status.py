"""Pure functions: what a ModelDeployment's status should say, from what the operator observed.

Conditions follow the kstatus conventions: `Ready` (the abnormal-false summary), `Progressing`
(a change is rolling out) and `Degraded` (something needs a human), with kstatus' standard names
`Reconciling` and `Stalled` mirroring the last two. Each has a CamelCase reason and
a message a user can act on; `lastTransitionTime` changes only when the condition's status does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modeldeploy.api import v1alpha1 as api
from modeldeploy.api.v1alpha1 import ModelDeploymentSpec
from modeldeploy.decisions.records import PodReport, VersionReport

Obj = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """Why the children were not (fully) applied: shown in status and as a Warning event."""

    reason: str  # InvalidSpec | StorageNotFound | ApplyFailed | ChildNotOwned | HostPathNotAllowed | ...
    message: str


@dataclass(frozen=True)
class Rollout:
    wanted: int
    ready: int
    updated: int
    total: int
    observed: bool  # the Deployment controller has seen the latest Deployment spec
    deadline_exceeded: bool

    @property
    def complete(self) -> bool:
        return self.observed and self.updated >= self.wanted and self.total <= self.wanted and self.ready >= self.wanted


def rollout_of(deployment: Obj | None) -> Rollout | None:
    if deployment is None:
        return None
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    conditions = {c.get("type"): c for c in st.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    return Rollout(
        wanted=int(spec.get("replicas", 1)),
        ready=int(st.get("readyReplicas") or 0),
        updated=int(st.get("updatedReplicas") or 0),
        total=int(st.get("replicas") or 0),
        observed=int(st.get("observedGeneration") or 0) >= int(deployment.get("metadata", {}).get("generation") or 0),
        deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
    )


def _condition(ctype: str, ok: bool, reason: str, message: str, generation: int) -> Obj:
    return {"type": ctype, "status": "True" if ok else "False", "reason": reason, "message": message, "observedGeneration": generation}


# Waiting reasons of a container that will not run without a change (the kubelet's names).
FAILING_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerError",
                   "CreateContainerConfigError", "RunContainerError"}


def container_failure(pods: list[Obj] | tuple[Obj, ...]) -> Obj | None:
    """The first server container that is failing, as KServe's `lastFailureInfo`: a container
    waiting for a reason it will not get over by itself (a crash loop, an image that cannot be
    pulled), or one that exited with an error and is not running again; with its last termination
    (reason, exit code, message: the log's last lines) and pod. None when every container runs."""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name") or "")):
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for c in (pod.get("status") or {}).get("containerStatuses") or []:
            state, last = c.get("state") or {}, (c.get("lastState") or {}).get("terminated") or {}
            waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
            ended = terminated or last
            if waiting.get("reason") in FAILING_WAITING:
                reason = str(waiting["reason"])
            elif terminated and int(terminated.get("exitCode") or 0) != 0:
                reason = str(terminated.get("reason") or "Error")
            else:
                continue
            info: Obj = {"pod": pod["metadata"]["name"], "container": c.get("name", ""), "reason": reason,
                         "restartCount": int(c.get("restartCount") or 0)}
            if ended:
                info.update(exitCode=int(ended.get("exitCode") or 0), message=str(ended.get("message") or "")[-1024:],
                            time=ended.get("finishedAt"))
            elif waiting.get("message"):
                info["message"] = str(waiting["message"])[-1024:]
            return {k: v for k, v in info.items() if v not in (None, "")}
    return None


def failure_text(f: Obj) -> str:
    code = f" (exit code {f['exitCode']})" if "exitCode" in f else ""
    message = str(f.get("message") or "").strip().splitlines()
    last = f": {message[-1]}" if message else ""
    return f"pod {f['pod']}, container {f['container']}: {f['reason']}{code}{last}"


STORAGE_UNAVAILABLE = "StorageUnavailable"


def store_error_of(pods: Iterable[PodReport] | None) -> str | None:
    """The first pod's report that it cannot list the model's object storage, as a condition's message."""
    return next((f"pod {p.pod}: {p.store_error}" for p in pods or () if p.store_error and not p.unreachable), None)


def pending_labels(spec: ModelDeploymentSpec | None, served: dict[int, VersionReport] | None) -> list[str]:
    """Labels the servers do not resolve as the spec says yet (`label→version`), from a server report."""
    if spec is None or served is None:
        return []
    return [f"{label}→{v}" for label, v in sorted((spec.version_labels or {}).items())
            if label not in (served.get(v) or VersionReport("Unknown")).labels]


def conditions_for(problem: Problem | None, rollout: Rollout | None, generation: int, labels_pending: list[str] | None = None,
                   failed: list[str] | None = None, failing: Obj | None = None,
                   unavailable: list[str] | None = None, token_refused: str | None = None,
                   store_error: str | None = None) -> list[Obj]:
    """Ready, Progressing, Degraded, and kstatus' own pair: `Reconciling` (= Progressing) and `Stalled`
    (= Degraded), which kstatus-based tools (Flux health checks, kpt, Config Sync) read to tell
    InProgress / Failed / Current; without them they would call a ModelDeployment Current as soon as
    observedGeneration matches, ready pods or not."""
    primary = _primary_conditions(problem, rollout, generation)
    if labels_pending and problem is None and rollout is not None and rollout.complete and not rollout.deadline_exceeded:
        # Pods are ready, but a label move has not reached the server yet (the kubelet refreshes the
        # ConfigMap volume, then the server's poll applies it; a label may only move to a loaded version).
        msg = f"labels and traffic not live everywhere yet: {'; '.join(labels_pending)}"
        primary = [_condition("Progressing", True, "LabelsPending", msg, generation) if c["type"] == "Progressing" else c for c in primary]
    if failed and problem is None:
        # A version the spec's labels need did not load: it gets no traffic (the table in force stays)
        msg = f"{'; '.join(failed)}; its labels and traffic stay where they were"
        primary = [_condition("Degraded", True, "VersionFailed", msg, generation) if c["type"] == "Degraded" else c for c in primary]
    if failing and problem is None and not any(c["type"] == "Degraded" and c["status"] == "True" for c in primary):
        # a server container that crashes or cannot start: say why, as the kubelet reported it
        msg = failure_text(failing)
        primary = [_condition("Degraded", True, "ContainerFailing", msg, generation) if c["type"] == "Degraded" else c
                   for c in primary]
    if token_refused and problem is None and not any(c["type"] == "Degraded" and c["status"] == "True" for c in primary):
        # pods refuse the operator's admin token: someone changed their Secret (admintoken.py)
        primary = [_condition("Degraded", True, "AdminTokenRejected", token_refused, generation)
                   if c["type"] == "Degraded" else c for c in primary]
    if store_error and problem is None and not any(c["type"] == "Degraded" and c["status"] == "True" for c in primary):
        # a pod cannot list the model's object storage (gone, denied, missing bucket): what it has
        # loaded keeps serving, new versions wait, and the server retries at every poll
        primary = [_condition("Degraded", True, STORAGE_UNAVAILABLE, store_error, generation)
                   if c["type"] == "Degraded" else c for c in primary]
    if unavailable and problem is None and rollout is not None and rollout.complete and rollout.wanted:
        # the pods are ready, but not every listed version is served yet: say which
        msg = f"{rollout.ready}/{rollout.wanted} pods ready; not available yet: {', '.join(unavailable)}"
        primary = [{**c, "message": msg} if c["type"] == "Ready" and c["status"] == "True" else c for c in primary]
    by_type = {c["type"]: c for c in primary}
    aliases = [{**by_type["Progressing"], "type": "Reconciling"}, {**by_type["Degraded"], "type": "Stalled"}]
    return primary + aliases


def _primary_conditions(problem: Problem | None, rollout: Rollout | None, generation: int) -> list[Obj]:
    if problem is not None:
        return [
            _condition("Ready", False, problem.reason, problem.message, generation),
            _condition("Progressing", False, problem.reason, "waiting for the spec or the cluster to be fixed", generation),
            _condition("Degraded", True, problem.reason, problem.message, generation),
        ]
    if rollout is None:
        return [
            _condition("Ready", False, "Creating", "the server Deployment is being created", generation),
            _condition("Progressing", True, "Creating", "the server Deployment is being created", generation),
            _condition("Degraded", False, "AsExpected", "", generation),
        ]
    pods = f"{rollout.ready}/{rollout.wanted} pods ready"
    if rollout.deadline_exceeded:
        msg = f"the rollout exceeded its progress deadline ({pods}); check the pods' events and logs"
        return [
            _condition("Ready", rollout.complete, "ProgressDeadlineExceeded", msg, generation),
            _condition("Progressing", False, "ProgressDeadlineExceeded", msg, generation),
            _condition("Degraded", True, "ProgressDeadlineExceeded", msg, generation),
        ]
    if rollout.complete:
        return [
            _condition("Ready", True, "Available" if rollout.wanted else "ScaledToZero", f"{pods}, every model available", generation),
            _condition("Progressing", False, "RolloutComplete", pods, generation),
            _condition("Degraded", False, "AsExpected", "", generation),
        ]
    detail = f"{pods}, {rollout.updated} updated of {rollout.total}"
    return [
        _condition("Ready", False, "PodsNotReady" if rollout.ready < rollout.wanted else "RollingOut", detail, generation),
        _condition("Progressing", True, "RollingOut", detail, generation),
        _condition("Degraded", False, "AsExpected", "", generation),
    ]


def rollout_conditions(conds: list[Obj], rollout: Obj, generation: int) -> list[Obj]:
    """A rollout in progress is Progressing; a rolled-back one is Degraded (reason RolledBack, or
    Aborted, LoadFailed) until the spec changes."""
    phase, message = rollout.get("phase"), str(rollout.get("message") or "")
    if phase in ("Progressing", "Promoting"):
        return [_condition(c["type"], True, "RolloutProgressing", message, generation)
                if c["type"] in ("Progressing", "Reconciling") else c for c in conds]
    if phase == "Failed":
        reason = str(rollout.get("reason") or "RolledBack")
        return [_condition(c["type"], True, reason, message, generation) if c["type"] in ("Degraded", "Stalled") else c
                for c in conds]
    return conds


def scaling_condition(autoscaler: Obj, generation: int) -> Obj:
    """`ScalingActive`, as the HPA's: False while the metric is missing (replicas are held)."""
    reason = str(autoscaler.get("reason") or ("HPA" if autoscaler.get("mode") == "hpa" else "Waiting"))
    held = reason in ("MetricUnavailable", "NoReadyPods")
    return _condition("ScalingActive", not held, reason, str(autoscaler.get("message") or ""), generation)


def keep_transition_times(new: list[Obj], old: list[Obj] | None, now: str) -> list[Obj]:
    previous = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        p = previous.get(c["type"])
        same = p is not None and p.get("status") == c["status"] and p.get("lastTransitionTime")
        out.append({**c, "lastTransitionTime": p["lastTransitionTime"] if p is not None and same else now})
    return out


def version_states(
    spec: ModelDeploymentSpec,
    rollout: Rollout | None,
    problem: Problem | None,
    served: dict[int, VersionReport] | None = None,
) -> list[Obj]:
    """Per-version state: what the servers report when they could be asked, else what readiness tells
    (ready pods serve every configured version)."""
    labels_by_version: dict[int, list[str]] = {}
    for label, v in sorted((spec.version_labels or {}).items()):
        labels_by_version.setdefault(v, []).append(label)
    if problem is not None or rollout is None:
        derived = "Pending"
    elif rollout.ready > 0 and rollout.observed:
        derived = "Available"
    elif rollout.total > 0:
        derived = "Loading"
    else:
        derived = "Pending"
    versions = sorted(spec.model.versions or (served or {}).keys())
    out = []
    for v in versions:
        entry: Obj = {"version": v, "state": derived}
        if served is not None and problem is None:
            report = served.get(v)
            entry["state"] = report.state if report else "Pending"
            if report and report.message:
                entry["message"] = report.message
            if report and report.labels:
                entry["labels"] = list(report.labels)  # as the servers route now
            if report and report.warmup:
                w = report.warmup
                entry["warmup"] = {"source": str(w.get("source", "model")), "records": int(w.get("records", 0)),
                                   "requests": int(w.get("requests", 0)), "seconds": float(w.get("seconds", 0.0))}
                if w.get("skipped"):
                    entry["warmup"]["skipped"] = {str(k): str(v) for k, v in w["skipped"].items()}
            if report and report.source:
                entry["source"] = report.source
            if report and report.download:
                entry["download"] = dict(report.download)
        if v in labels_by_version and "labels" not in entry:
            entry["labels"] = labels_by_version[v]
        out.append(entry)
    return out


def serving_status(spec: ModelDeploymentSpec, name: str, versions: list[Obj], routing: Obj | None) -> Obj:
    """What the pods serve: the model, its versions and where the labels point in the table in force."""
    labels = dict(routing["labels"]) if routing is not None else dict(spec.version_labels or {})
    out: Obj = {
        "modelName": api.model_name(spec, name),
        "versions": versions,
        "versionsSummary": (",".join(str(v) for v in sorted(spec.model.versions)) if spec.model.versions
                            else f"latest:{spec.model.latest_versions}"),
        "versionLabels": labels,
        "labelsSummary": ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None,
        "selector": f"app.kubernetes.io/name=model-server,app.kubernetes.io/instance={name}",
    }
    if routing is not None:
        out.update(routing=routing, trafficSummary=routing.get("summary") or None)
    return out


# What the running pods serve; kept from the last good generation while a newer one has a problem.
SERVING_KEYS = ("modelName", "versions", "versionsSummary", "versionLabels", "labelsSummary", "selector", "routing",
                "trafficSummary")


def compute_status(
    *,
    spec: ModelDeploymentSpec | None,
    name: str,
    generation: int,
    deployment: Obj | None,
    problem: Problem | None,
    previous: Obj | None,
    config_hash: str | None,
    now: str,
    served: dict[int, VersionReport] | None = None,
    routing: Obj | None = None,
    autoscaler: Obj | None = None,
    progressive: Obj | None = None,
    failing: Obj | None = None,
    token_refused: str | None = None,
    store_error: str | None = None,
) -> Obj:
    """The full status object (plain dict in the CRD's camelCase). `routing` is the routing table
    in force and its delivery (plan.routing_status)."""
    rollout = rollout_of(deployment)
    if routing is not None and routing.get("delivery") == "Push":
        pending = list(routing.get("waiting") or [])
    else:
        pending = pending_labels(spec, served) if problem is None else []
    failed = list((routing or {}).get("failed") or [])
    versions = version_states(spec, rollout, problem, served) if spec is not None else []
    unavailable = [f"version {v['version']} {v['state']}" for v in versions if v["state"] not in ("Available", "Unloaded")]
    conds = conditions_for(problem, rollout, generation, pending, failed, failing, unavailable, token_refused,
                           store_error)
    if autoscaler is not None and problem is None:
        conds.append(scaling_condition(autoscaler, generation))
    if progressive is not None and problem is None:
        conds = rollout_conditions(conds, progressive, generation)
    conditions = keep_transition_times(conds, (previous or {}).get("conditions"), now)
    status: Obj = {"observedGeneration": generation, "conditions": conditions}
    if rollout is not None:
        status.update(replicas=rollout.total, desiredReplicas=rollout.wanted, readyReplicas=rollout.ready, updatedReplicas=rollout.updated)
    else:
        status.update(replicas=0, desiredReplicas=0, readyReplicas=0, updatedReplicas=0)
    if spec is not None:
        status.update(serving_status(spec, name, versions, routing))
    if problem is not None and deployment is not None and previous:
        # Nothing of the broken generation was applied: the running pods still serve what the
        # last good generation configured, so status keeps describing that.
        status.update({k: previous[k] for k in SERVING_KEYS if k in previous})
    if failing is not None:
        status["lastFailureInfo"] = failing
    if autoscaler is not None:
        status["autoscaler"] = autoscaler
    if progressive is not None:
        status["rollout"] = progressive
    if config_hash:
        status["configHash"] = config_hash
    return {k: v for k, v in status.items() if v is not None}

