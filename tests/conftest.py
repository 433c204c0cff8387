"""Shared fixtures: a real S3 server (SeaweedFS), the kmock Kubernetes API, and the e2e cluster probe."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.kube import kubeconfig_cluster_reason, register_trainjobs
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


_cluster_reason: list[str | None] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e:
        return
    if not _cluster_reason:
        _cluster_reason.append(kubeconfig_cluster_reason())
    reason = _cluster_reason[0]
    if reason:
        for item in e2e:
            item.add_marker(pytest.mark.skip(reason=reason))
