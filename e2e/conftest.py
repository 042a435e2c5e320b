"""Fixtures for the e2e scenarios: the cluster (a real one from E2E_KUBECONFIG, else the local
cluster, started once per session), a fresh namespace, the operator, the models.

The local cluster runs without its own operator here (`--no-operator`): each scenario starts the
operator for its namespace, as on a real cluster (`modeldeploy operator --namespace NS`), with
Service names reachable through the local cluster's HTTP proxy.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Cluster, LocalRun, OperatorProcess, build_models, wait_local_ready

KUBECONFIG = os.environ.get("E2E_KUBECONFIG", "")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if KUBECONFIG:
        c = Cluster(Path(KUBECONFIG))
        c.kubectl("apply", "-f", str(ROOT / "crds"))
        c.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.serving.modeldeploy.io", "--timeout=60s")
        yield c
        return
    models = build_models(tmp_path_factory.mktemp("models"))
    state = tmp_path_factory.mktemp("localcluster")
    run = LocalRun(state, ["--no-operator", "--no-example", "--mount", f"/models={models}"], state.parent / "localcluster.log").start()
    try:
        info = wait_local_ready(run)
        yield Cluster(Path(info["kubeconfig"]), local=info)
    finally:
        run.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"md-e2e-{uuid.uuid4().hex[:6]}"
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log", cluster.operator_env()).start()
    yield op
    op.stop()
