"""`modeldeploy promote NAME`, `modeldeploy rollback NAME`, `modeldeploy abort NAME`: the label
flips a user would type with `kubectl patch`, as verbs (as `kubectl argo rollouts promote` does).

Without a rollout in progress they patch the spec (a merge patch, conditional on the
resourceVersion read, so a concurrent edit is never overwritten):

- promote: `versionLabels.stable` moves to the canary's version, the `canary` label is removed
  and `traffic.canary` set to 0 (every request then goes to the promoted version);
- rollback: the `canary` label is removed and `traffic.canary` set to 0 (stable stays).

With a progressive rollout in progress (status.rollout.phase Progressing) the spec stays as it is
(it is the desired end state): promote skips the remaining steps and abort (or rollback) rolls
back now, by the annotation `serving.modeldeploy.io/rollout-command: <verb>@<generation>`, which
the operator acts on once and records in status and Events.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from modeldeploy.api import v1alpha1 as api

COMMAND_ANNOTATION = api.ROLLOUT_COMMAND_ANNOTATION
Obj = dict[str, Any]


class VerbError(Exception):
    """Why the verb cannot apply to this ModelDeployment (exit 1 with the message)."""


def rollout_in_progress(md: Obj) -> bool:
    return ((md.get("status") or {}).get("rollout") or {}).get("phase") == "Progressing"


def plan_patch(verb: str, md: Obj) -> tuple[Obj, str]:
    """Pure: the merge patch for `verb` on `md`, and what it does (VerbError when it cannot)."""
    meta = md["metadata"]
    rv = meta.get("resourceVersion")
    guard = {"resourceVersion": rv} if rv else {}
    if rollout_in_progress(md):
        if verb == "rollback":
            verb = "abort"
        gen = meta.get("generation", 1)
        return ({"metadata": {**guard, "annotations": {COMMAND_ANNOTATION: f"{verb}@{gen}"}}},
                f"asked the operator to {'skip the remaining rollout steps' if verb == 'promote' else 'roll back now'}")
    if verb == "abort":
        raise VerbError("no rollout is in progress (status.rollout.phase is not Progressing); nothing to abort")
    labels = (md.get("spec") or {}).get("versionLabels") or {}
    if "canary" not in labels:
        raise VerbError("spec.versionLabels has no 'canary' label: nothing to " + verb)
    spec: Obj = {"versionLabels": {"canary": None}}
    if (md.get("spec") or {}).get("traffic") is not None:
        spec["traffic"] = {"canary": 0}
    if verb == "promote":
        spec["versionLabels"]["stable"] = labels["canary"]
        what = f"stable -> version {labels['canary']} (was {labels.get('stable')}); canary label removed"
    else:
        what = f"canary label (version {labels['canary']}) removed; stable stays on version {labels.get('stable')}"
    if "traffic" in spec:
        what += ", traffic.canary set to 0"
    return {"metadata": guard, "spec": spec}, what


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the ModelDeployment")
    parser.add_argument("--namespace", "-n", default="", help="its namespace (default: the kubeconfig context's)")
    parser.add_argument("--dry-run", action="store_true", help="print the patch, change nothing")


def _namespace(given: str) -> str:
    if given:
        return given
    try:
        from kubernetes import config

        _, ctx = config.list_kube_config_contexts()
        return str((ctx or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # noqa: BLE001 - no kubeconfig: in-cluster or default
        return "default"


def run_verb(verb: str, args: argparse.Namespace) -> int:
    from modeldeploy.clients.kube import Kube, KubeError, path_for

    namespace = _namespace(args.namespace)
    try:
        kube = Kube.from_environment()
        md = kube.get(api.API_VERSION, api.KIND, namespace, args.name)
        if md is None:
            print(f"modeldeploy {verb}: ModelDeployment {namespace}/{args.name} not found", file=sys.stderr)
            return 1
        patch, what = plan_patch(verb, md)
        if args.dry_run:
            print(json.dumps(patch))
            return 0
        kube.request("PATCH", path_for(api.API_VERSION, api.KIND, namespace, args.name), body=patch,
                     content_type="application/merge-patch+json")
    except VerbError as exc:
        print(f"modeldeploy {verb}: {namespace}/{args.name}: {exc}", file=sys.stderr)
        return 1
    except KubeError as exc:
        hint = " (it changed meanwhile: run the command again)" if exc.status == 409 else ""
        print(f"modeldeploy {verb}: {exc}{hint}", file=sys.stderr)
        return 1
    print(f"modeldeployment {namespace}/{args.name}: {what}")
    return 0


class Promote:
    """Promote the canary to stable (or, during a rollout, skip its remaining steps)."""

    add_arguments = staticmethod(add_arguments)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return run_verb("promote", args)


class Rollback:
    """Drop the canary (or, during a rollout, roll it back now)."""

    add_arguments = staticmethod(add_arguments)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return run_verb("rollback", args)


class Abort:
    """Roll back a progressive rollout now."""

    add_arguments = staticmethod(add_arguments)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return run_verb("abort", args)
