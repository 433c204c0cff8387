"""The kmock fixture serves TrainJobs over real HTTP: create, read back, patch status."""

from __future__ import annotations

import aiohttp

from aidi.api import trainjob as tj
from aidi.api.loader import load_file
from tests.conftest import REPO


async def test_trainjob_round_trip_over_http(kube_api) -> None:
    job = load_file(REPO / "examples" / "trainjob.yaml").job
    base = f"{str(kube_api.url).rstrip('/')}/apis/{tj.GROUP}/{tj.VERSION}/namespaces/team-a/{tj.PLURAL}"
    async with aiohttp.ClientSession() as session:
        async with session.post(base, json=job.to_wire()) as resp:
            assert resp.status in (200, 201), await resp.text()
        async with session.patch(f"{base}/{job.metadata.name}/status",
                                 json={"status": {"phase": "Running"}},
                                 headers={"Content-Type": "application/merge-patch+json"}) as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(f"{base}/{job.metadata.name}") as resp:
            body = await resp.json()
    assert body["spec"]["gpusPerWorker"] == job.spec.gpus_per_worker
    assert body["status"]["phase"] == "Running"
    # What the server stored still validates as a TrainJob.
    tj.TrainJob.model_validate({k: v for k, v in body.items() if k != "status"})
