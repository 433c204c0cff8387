"""Operator throughput: create N TrainJobs, time create → all of the job's pods created, and the operator's
peak RSS. Targets (issue 6): p99 under 2 s, RSS under 200 MB.

    .venv/bin/python bench/operator.py                 # 1-worker, then 2-worker jobs, on kmock (in this process)
    .venv/bin/python bench/operator.py --cluster       # against the current kubeconfig's cluster
    .venv/bin/python bench/operator.py --jobs 50 --workers 2 --json

The operator runs as its own process (``aidi-operator``, exactly as deployed), so its RSS is its own.
Two baselines, measured in the same run on the same server, with the operator stopped:

- *server alone*: the client makes the operator's own requests for each job (its pods and Service at once,
  then the status write and kopf's two annotation patches) the moment the job is created. What remains is
  the API server's cost of that traffic; the operator's figure minus this one is the operator's own.
- *pods only*: the client creating each job's pods itself, nothing else — the server's create → watch floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import kmock  # noqa: E402
from aidi_operator.kube import KubeApi, core_path, trainjob_path  # noqa: E402
from aidi_operator.startup import OperatorSettings, connection_info  # noqa: E402

from aidi.api import trainjob as tj  # noqa: E402
from aidi.jobs import podspec  # noqa: E402
from tests.support.kube import register_trainjobs  # noqa: E402
from tests.support.operator import install_crd, kmock_api, trainjob  # noqa: E402

TARGET_P99_S = 2.0
TARGET_RSS_MB = 200.0


def lean_kmock() -> None:
    """Let kmock search only the newest requests of its log.

    kmock picks the reaction for a request by scanning its whole request log for that request once per
    reaction, so each request costs O(requests so far) and 200 jobs' worth of traffic would measure
    kmock, not the operator. A request being matched was just received: it is among the newest.
    """
    from kmock._internal import dsl

    dsl.Root.__iter__ = lambda self: reversed(self._requests[-32:])  # type: ignore[method-assign]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class PodWatch:
    """When each pod of a namespace was first seen on a watch stream."""

    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self._task = asyncio.create_task(self._run(api, namespace))

    async def _run(self, api: KubeApi, namespace: str) -> None:
        async for event in api.watch(core_path(namespace, "pods")):
            name = event.get("object", {}).get("metadata", {}).get("name")
            if event.get("type") == "ADDED" and name:
                self.seen.setdefault(name, time.monotonic())

    async def wait(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not names <= set(self.seen):
            if time.monotonic() > deadline:
                missing = sorted(names - set(self.seen))
                raise SystemExit(f"timed out: {len(missing)} pods never appeared, e.g. {missing[:3]}")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._task.cancel()


def job_spec(workers: int) -> dict[str, Any]:
    return {"workers": {"min": workers, "max": workers}, "gpusPerWorker": 1}


def pod_names(name: str, workers: int) -> list[str]:
    spec = tj.TrainJobSpec.model_validate({"command": ["true"]} | job_spec(workers))
    return [m.pod_name(name) for m in podspec.members(spec)]


async def _operator_traffic(api: KubeApi, body: dict[str, Any]) -> None:
    """The requests the operator makes for a new job, in its order, without the operator."""
    job = tj.TrainJob.model_validate(body)
    namespace, name, uid = job.metadata.namespace or "default", job.metadata.name, body["metadata"]["uid"]
    creates = [(core_path(namespace, "pods"), pod) for pod in podspec.build_pods(job, podspec.PodSettings(),
                                                                                 owner_uid=uid)]
    service = podspec.build_service(job, uid)
    if service is not None:
        creates.append((core_path(namespace, "services"), service))
    await asyncio.gather(*(api.create(path, obj) for path, obj in creates))
    await api.patch(trainjob_path(namespace, name, sub="status"), {"status": {"phase": "Pending"}})
    annotations = {"aidi.io/kopf-managed": "yes", "aidi.io/last-handled-configuration": json.dumps(body["spec"])}
    for _ in range(2):  # kopf stores its diff base twice per job on kmock (no resourceVersion to tell events apart)
        await api.patch(trainjob_path(namespace, name), {"metadata": {"annotations": annotations}})


async def server_alone(api: KubeApi, namespace: str, jobs: int, workers: int) -> list[float]:
    """No operator: the client creates the jobs as the operator run does and makes the operator's requests."""
    watch = PodWatch(api, namespace)
    await asyncio.sleep(0.2)
    started: dict[str, float] = {}
    tasks = []
    for i in range(jobs):
        body = trainjob(f"alone-{i}", namespace, **job_spec(workers))
        started[body["metadata"]["name"]] = time.monotonic()
        await api.create(trainjob_path(namespace), body)
        tasks.append(asyncio.create_task(_operator_traffic(api, body)))
    await asyncio.gather(*tasks)
    names = {p for n in started for p in pod_names(n, workers)}
    await watch.wait(names, timeout=120)
    watch.stop()
    return [max(watch.seen[p] for p in pod_names(n, workers)) - t for n, t in started.items()]


async def baseline(api: KubeApi, namespace: str, jobs: int, workers: int) -> list[float]:
    """The client creates each job's pods itself: the API server's own latency."""
    watch = PodWatch(api, namespace)
    await asyncio.sleep(0.2)
    started: dict[str, float] = {}
    for i in range(jobs):
        job = tj.TrainJob.model_validate(trainjob(f"base-{i}", namespace, **job_spec(workers)))
        started[job.metadata.name] = time.monotonic()
        for pod in podspec.build_pods(job, podspec.PodSettings()):
            pod["metadata"]["labels"].pop(podspec.LABEL_MANAGED_BY)  # not the operator's
            await api.create(core_path(namespace, "pods"), pod)
    names = {p for i in range(jobs) for p in pod_names(f"base-{i}", workers)}
    await watch.wait(names, timeout=120)
    watch.stop()
    return [max(watch.seen[p] for p in pod_names(n, workers)) - t for n, t in started.items()]


def start_operator(server: str | None, namespace: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("aidi-operator", path=str(Path(sys.executable).parent)) or "aidi-operator"
    argv = [exe, "--liveness-port", "0", "--resync-seconds", "10"]
    if server:
        argv += ["--server", server]  # kmock cannot list namespaces, which kopf does for -n: watch all
    else:
        argv += ["-n", namespace]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def stop_operator(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def operator_run(api: KubeApi, namespace: str, jobs: int, workers: int,
                       proc: subprocess.Popen[bytes]) -> tuple[list[float], float, float]:
    watch = PodWatch(api, namespace)
    # Warm up: the operator is ready once it has made the pods of one job.
    await api.create(trainjob_path(namespace), trainjob("warmup", namespace, **job_spec(workers)))
    await watch.wait(set(pod_names("warmup", workers)), timeout=60)
    cpu0 = cpu_seconds(proc.pid)
    started: dict[str, float] = {}
    t0 = time.monotonic()
    for i in range(jobs):
        name = f"job-{i}"
        started[name] = time.monotonic()
        await api.create(trainjob_path(namespace), trainjob(name, namespace, **job_spec(workers)))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{jobs} TrainJobs created ({(i + 1) / (time.monotonic() - t0):.0f}/s)", file=sys.stderr)
    names = {p for n in started for p in pod_names(n, workers)}
    await watch.wait(names, timeout=120)
    await asyncio.sleep(1.0)  # let status writes settle before reading the peak
    rss, cpu = peak_rss_mb(proc.pid), cpu_seconds(proc.pid) - cpu0
    watch.stop()
    return [max(watch.seen[p] for p in pod_names(n, workers)) - t for n, t in started.items()], rss, cpu


def summary(latencies: list[float]) -> dict[str, float]:
    return {"p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "mean_s": statistics.fmean(latencies)}


async def run(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    if args.cluster:
        api = KubeApi(lambda: connection_info(OperatorSettings()))
        await install_crd(api)
        server_url = None
        emulator = None
    else:
        lean_kmock()
        emulator = kmock.KubernetesEmulator()
        await emulator.__aenter__()
        server = kmock.Server(emulator)
        await server.__aenter__()
        register_trainjobs(emulator)
        server_url = str(emulator.url)
        api = kmock_api(server_url)
    suffix = uuid.uuid4().hex[:6]
    base_ns, op_ns, alone_ns = f"bench-base-{suffix}", f"bench-op-{suffix}", f"bench-alone-{suffix}"
    if args.cluster:  # kmock serves any namespace without one
        for ns in (base_ns, op_ns, alone_ns):
            await api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": ns}})
    proc = None
    try:
        proc = start_operator(server_url, op_ns)
        print(f"operator: creating {args.jobs} TrainJobs ...", file=sys.stderr)
        ours, rss, cpu = await operator_run(api, op_ns, args.jobs, workers, proc)
        stop_operator(proc)
        # After, so that the server holds at least as many objects as it did for the operator.
        print(f"server alone: the operator's requests for {args.jobs} jobs, made directly ...", file=sys.stderr)
        alone = await server_alone(api, alone_ns, args.jobs, workers)
        print(f"pods only: creating the pods of {args.jobs} jobs directly ...", file=sys.stderr)
        base = await baseline(api, base_ns, args.jobs, workers)
    finally:
        if proc is not None:
            stop_operator(proc)
        if args.cluster:
            for ns in (base_ns, op_ns, alone_ns):
                await api.delete(f"/api/v1/namespaces/{ns}")
        await api.close()
        if emulator is not None:
            await server.__aexit__(None, None, None)
            await emulator.__aexit__(None, None, None)
    return {"server": "cluster" if args.cluster else "kmock", "jobs": args.jobs, "workers": workers,
            "pods_per_job": len(pod_names("x", workers)), "operator": summary(ours),
            "server_alone": summary(alone), "baseline": summary(base), "operator_peak_rss_mb": rss,
            "operator_cpu_s": cpu, "load_average": os.getloadavg()[0],
            "targets": {"p99_s": TARGET_P99_S, "rss_mb": TARGET_RSS_MB}}


def report(result: dict[str, Any]) -> None:
    op, alone, base = result["operator"], result["server_alone"], result["baseline"]
    print(f"\n{result['jobs']} TrainJobs x {result['pods_per_job']} pod(s) on {result['server']}, "
          f"{result['workers']} worker(s) (load average {result['load_average']:.1f})")
    print(f"{'':24}{'operator':>10}{'server alone':>14}{'ratio':>7}{'pods only':>11}{'target':>8}")
    for key, label in (("p50_s", "create→pods p50 (s)"), ("p99_s", "create→pods p99 (s)")):
        target = f"< {TARGET_P99_S:g}" if key == "p99_s" else ""
        print(f"{label:24}{op[key]:>10.3f}{alone[key]:>14.3f}{op[key] / alone[key]:>7.1f}{base[key]:>11.3f}"
              f"{target:>8}")
    rss = result["operator_peak_rss_mb"]
    print(f"{'operator peak RSS (MB)':24}{rss:>10.1f}{'':>14}{'':>7}{'':>11}{f'< {TARGET_RSS_MB:g}':>8}")
    print(f"operator CPU during the run: {result['operator_cpu_s']:.1f} s")
    ok = op["p99_s"] < TARGET_P99_S and rss < TARGET_RSS_MB
    print(f"targets {'met' if ok else 'MISSED'}: p99 {op['p99_s']:.3f} s, peak RSS {rss:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="TrainJobs to create (default: 200)")
    parser.add_argument("--workers", default="1,2",
                        help="workers per job; a comma-separated list runs each in turn (default: 1,2)")
    parser.add_argument("--cluster", action="store_true", help="use the current kubeconfig's cluster, not kmock")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers takes numbers separated by commas, e.g. --workers 1,2 (got {args.workers!r})")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = []
    for workers in worker_counts:
        print(f"== {args.jobs} TrainJobs with {workers} worker(s)", file=sys.stderr)
        results.append(asyncio.run(run(args, workers)))  # a fresh server each time: no objects carried over
        if not args.json:
            report(results[-1])
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
