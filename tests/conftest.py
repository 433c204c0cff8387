"""Shared fixtures: a real S3 server (SeaweedFS), the kmock Kubernetes API, and a real cluster for the
tests marked ``e2e`` (tests/support/e2e.py: which cluster, the nodes and kubelet the tests play, the
chart installed for real)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import e2e
from tests.support.kube import register_trainjobs
from tests.support.seaweedfs import SeaweedFS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS S3 server on a free loopback port for the whole run. Tests use their own buckets."""
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture()
async def kube_api(kmock) -> AsyncIterator[object]:
    """The kmock Kubernetes emulator on a loopback port with TrainJobs registered; ``str(kube_api.url)``."""
    register_trainjobs(kmock)
    yield kmock


# ------------------------------------------------------------------------------------ the e2e cluster

_cluster_reason: list[str | None] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e_items:
        return
    if not _cluster_reason:
        _cluster_reason.append(e2e.cluster_reason())
    reason = _cluster_reason[0]
    if reason:
        for item in e2e_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _e2e_kubeconfig(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """An e2e test (and what it starts) sees the e2e cluster as its kubeconfig; no other test does."""
    if request.node.get_closest_marker("e2e"):
        monkeypatch.setenv("KUBECONFIG", e2e.kubeconfig_path())


@pytest.fixture(scope="session")
def e2e_run() -> Iterator[str]:
    """This run's id; the cluster-scoped objects the suite makes are checked to be gone at the end."""
    snapshot = e2e.ClusterSnapshot.take()
    yield e2e.new_run_id()
    left = snapshot.leftovers()
    assert not left, f"the e2e tests left cluster-scoped objects behind: {left}"


@pytest.fixture(scope="session")
def e2e_nodes(e2e_run: str) -> Iterator[e2e.Kubelet]:
    """Two Nodes with 8 GPUs each, kept Ready, whose pod deletions the tests' kubelet confirms."""
    with e2e.Kubelet(e2e_run) as kubelet:
        yield kubelet


@pytest.fixture(scope="session")
def platform(e2e_run: str, e2e_nodes: e2e.Kubelet, s3_server: SeaweedFS,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[e2e.Platform]:
    """charts/aidi installed for real (`helm install`) with two teams and the console, the tests' S3
    server as its dataspace (each team with its own account there); removed at the end."""
    installed = e2e.Platform(e2e_run, tmp_path_factory.mktemp("helm-home"), s3_server.endpoint,
                             (s3_server.access_key, s3_server.secret_key),
                             team_accounts=tuple(s3_server.teams.values()))
    try:
        installed.install()
        yield installed
    finally:
        installed.uninstall()
