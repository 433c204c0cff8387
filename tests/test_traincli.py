"""traincli against the kmock Kubernetes API and a SeaweedFS dataspace, driven through real argument lists.

The kubernetes client is synchronous and kmock runs in the test's event loop, so every CLI call goes
through ``asyncio.to_thread`` (a sync call on the loop's thread would deadlock it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidi.cli import aidi_main, traincli
from aidi.cluster import gpucluster, jobs
from aidi.cluster.client import JobClient, connect
from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.errors import ConnectionFailed, NotFoundError
from aidi.jobs import codepkg
from tests.test_codepkg import make_code_folder, tree_digest
from tests.test_podsteps import use_s3_dataspace

NS = "team-a"
JOB = "adasmini-4pe"
PASSWORD = "pw-" + uuid.uuid4().hex  # unique, so finding it anywhere is a real leak
TRAINJOBS = f"/apis/aidi.io/v1alpha1/namespaces/{NS}/trainjobs"


async def cli(main: Any, argv: list[str]) -> int:
    return await asyncio.to_thread(main, argv)


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture()
def cluster_file(tmp_path: Path, kube_api) -> Path:
    path = tmp_path / "gpucluster.yaml"
    assert traincli.main(["init", "-t", f"{NS}:test-token", "--server", str(kube_api.url), "-c", str(path)]) == 0
    return path


@pytest.fixture()
def jobs_api(cluster_file: Path) -> JobClient:
    return connect(gpucluster.resolve(cluster_file))


@pytest.fixture()
def dataspace_env(s3_server, monkeypatch: pytest.MonkeyPatch) -> DataspaceConfig:
    return use_s3_dataspace(s3_server, monkeypatch)


def write_job(tmp_path: Path, name: str = JOB) -> Path:
    make_code_folder(tmp_path / "code")
    job = tmp_path / "train_job.yaml"
    job.write_text(yaml.safe_dump({
        "REQUIRED": {"JOB_NAME": name, "JOB_PASSWD": PASSWORD, "UPLOAD_DIR": "./code", "PROJECT_ID": "PDT2021005",
                     "WORKER_MIN_NUM": 1, "WORKER_MAX_NUM": 1, "GPU_PER_WORKER": 4,
                     "RUN_SCRIPTS": "${WORKING_PATH}/run.sh"},
        "OPTIONAL": {"PRIORITY": 5, "WALL_TIME": 10,
                     "DATA_SPACE": {"DATA_TYPE": "trainset", "INPUT": "adasmini_4pe", "OUTPUT": "models"}},
    }))
    return job


def answer_create_with_uid(kube_api, uid: str) -> None:
    """Answer TrainJob creation as a real API server does: 201 with the object and the uid it assigned
    (kmock stores the object but assigns no uid)."""
    def created(request: Any) -> dict[str, Any]:
        body = json.loads(json.dumps(request.data))
        body["metadata"]["uid"] = uid
        return body
    kube_api[f"post {TRAINJOBS}"] << 201 << created


# ---------------------------------------------------------------------------------------------- init


def test_init_writes_a_private_config_and_switches_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hobot" / "gpucluster.yaml"
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert traincli.main(["init", "-t", "team-a/gpu-a100:tok-123", "--server", "https://k8s:6443",
                          "--certificate-authority", str(ca), "-c", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = yaml.safe_load(path.read_text())
    assert data == {"current-cluster": "mycluster1", "clusters": {"mycluster1": {
        "appid": "team-a/gpu-a100", "appkey": "tok-123", "server": "https://k8s:6443",
        "certificate-authority": str(ca.resolve())}}}
    assert "tok-123" not in capsys.readouterr().out

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("team-b\n"))  # `-t -`: kubeconfig, from stdin
    assert traincli.main(["init", "-t", "-", "--name", "other", "-c", str(path)]) == 0
    resolved = gpucluster.resolve(path)
    assert (resolved.name, resolved.cluster.namespace, resolved.cluster.appkey) == ("other", "team-b", None)
    first = gpucluster.resolve(path, "mycluster1").cluster
    assert (first.namespace, first.queue, first.appkey.get_secret_value()) == ("team-a", "gpu-a100", "tok-123")
    assert traincli.main(["init", "--type", "local", "--name", "laptop", "-c", str(path)]) == 0
    assert gpucluster.resolve(path).cluster.type == "local"


@pytest.mark.parametrize(("argv", "message"), [
    (["-t", "team-a:"], "APPID:APPKEY"),
    (["-t", "team-a:tok"], "--server"),
    (["-t", "Team_A:tok", "--server", "https://k"], "NAMESPACE or NAMESPACE/QUEUE"),
])
def test_init_rejects_bad_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                 message: str) -> None:
    assert traincli.main(["init", *argv, "-c", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and "tok" not in err.replace("token", "")
    assert not (tmp_path / "c.yaml").exists()


def _jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def test_init_says_when_the_app_key_expires_and_refuses_an_expired_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    later = _jwt({"sub": "system:serviceaccount:team-a:appkey-1a2b3c4d", "exp": 4102444800})   # 2100-01-01
    assert traincli.main(["init", "-t", f"team-a:{later}", "--server", "https://k:6443", "-c", str(path)]) == 0
    assert "the APP KEY expires 2100-01-01 00:00 UTC" in capsys.readouterr().out
    path.unlink()
    expired = _jwt({"sub": "system:serviceaccount:team-a:appkey-1a2b3c4d", "exp": 1700000000})
    assert traincli.main(["init", "-t", f"team-a:{expired}", "--server", "https://k:6443", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "this APP KEY expired at 2023-11-14 22:13 UTC" in err and "aidi appkey issue" in err
    assert expired not in err and not path.exists()
    assert gpucluster.token_expiry("not-a-jwt") is None and gpucluster.token_expiry(_jwt({"sub": "x"})) is None


def test_broken_config_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "gpucluster.yaml"
    path.write_text("current-cluster: a\nclusters:\n  a: {appid: team-a, insecur: true}\n")
    with pytest.raises(Exception, match=r"gpucluster.yaml: 1 problem\n"
                                        r"  - clusters.a.insecur: unknown field; did you mean `insecure`"):
        gpucluster.resolve(path)


def test_a_missing_ca_file_is_named_not_taken_for_an_unreachable_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # What an APP KEY snippet pasted as-is looks like: its CA path is a placeholder.
    path = tmp_path / "gpucluster.yaml"
    path.write_text(yaml.safe_dump({"current-cluster": "c", "clusters": {"c": {
        "appid": "team-a", "appkey": "tok-123", "server": "https://127.0.0.1:1",
        "certificate-authority": "/path/to/aidi-ca.crt"}}}))
    assert traincli.main(["list", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "certificate-authority /path/to/aidi-ca.crt is not a file" in err and "/personal/ca.crt" in err
    assert "tok-123" not in err


# -------------------------------------------------------------------------------------------- submit


async def test_submit_uploads_an_encrypted_package_and_creates_secret_and_job(
        tmp_path: Path, kube_api, cluster_file: Path, jobs_api: JobClient, dataspace_env: DataspaceConfig,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every log line of every library, checked for the password below
    answer_create_with_uid(kube_api, "uid-1234")
    job_file = write_job(tmp_path)
    assert await cli(traincli.main, ["submit", "-f", str(job_file), "-c", str(cluster_file), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert (result["name"], result["namespace"], result["uid"]) == (JOB, NS, "uid-1234")

    job = await call(jobs_api.get_job, JOB)
    package = job["spec"]["codePackage"]
    sha = package["sha256"]
    assert package["uri"] == f"s3://{dataspace_env.bucket}/codepkgs/{NS}/{JOB}/{sha}.tar.gz.enc"
    assert package["passwordSecretRef"] == {"name": f"{JOB}-code", "key": "password"}
    assert job["spec"]["gpusPerWorker"] == 4 and job["spec"]["activeDeadlineSeconds"] == 600
    everything = json.dumps(job) + out + err + caplog.text + cluster_file.read_text()
    assert PASSWORD not in everything, "the password leaked into the CR, the output or the logs"

    secret = await call(jobs_api.core.read_namespaced_secret, f"{JOB}-code", NS)
    assert base64.b64decode(secret.data["password"]).decode() == PASSWORD
    owner = secret.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.api_version) == ("TrainJob", JOB, "uid-1234", "aidi.io/v1alpha1")

    # What the pod's init step does with it: the same tree back, byte for byte.
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    dest = tmp_path / "job-code"
    assert await cli(aidi_main.main, ["fetch-code", package["uri"], "--password-file", str(password_file),
                                      "--dest", str(dest)]) == 0
    source = tree_digest(tmp_path / "code")
    expected = {k: v for k, v in source.items() if not k.startswith(("data", "__pycache__"))
                and k not in {"train.log", "top-only.tmp"}}
    assert tree_digest(dest) == expected

    password_file.write_text("not-the-password")
    assert await cli(aidi_main.main, ["fetch-code", package["uri"], "--password-file", str(password_file),
                                      "--dest", str(tmp_path / "other")]) == 6
    assert "password is wrong" in capsys.readouterr().err


async def test_fetch_code_refuses_a_replaced_package(tmp_path: Path, dataspace_env: DataspaceConfig,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    package = codepkg.build(make_code_folder(tmp_path / "src"), PASSWORD, tmp_path)
    store = open_dataspace(dataspace_env).store
    key = f"codepkgs/{NS}/{JOB}/{'0' * 64}.tar.gz.enc"  # the name promises another sha256
    await call(store.put_file, key, package.path)
    (tmp_path / "pw").write_text(PASSWORD)
    code = await cli(aidi_main.main, ["fetch-code", store.uri(key), "--password-file", str(tmp_path / "pw"),
                                      "--dest", str(tmp_path / "dest")])
    assert code == 6
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


async def test_submit_native_cr_as_is(tmp_path: Path, cluster_file: Path, jobs_api: JobClient,
                                      caplog: pytest.LogCaptureFixture) -> None:
    source = Path(__file__).resolve().parent.parent / "examples" / "trainjob.yaml"
    doc = yaml.safe_load(source.read_text())
    del doc["metadata"]["namespace"]  # the cluster's appid decides
    cr = tmp_path / "trainjob.yaml"
    cr.write_text(yaml.safe_dump(doc))
    assert await cli(traincli.main, ["submit", "-f", str(cr), "-c", str(cluster_file)]) == 0
    job = await call(jobs_api.get_job, doc["metadata"]["name"])
    assert job["metadata"]["namespace"] == NS
    assert job["spec"]["codePackage"] == doc["spec"]["codePackage"]
    assert "Secret adasmini-4pe-code does not exist" in caplog.text


async def test_submit_cr_with_an_upload_dir_annotation(tmp_path: Path, kube_api, cluster_file: Path,
                                                      jobs_api: JobClient, dataspace_env: DataspaceConfig) -> None:
    make_code_folder(tmp_path / "code")
    cr = tmp_path / "trainjob.yaml"
    cr.write_text(yaml.safe_dump({
        "apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "cr-job", "annotations": {"aidi.io/upload-dir": "./code"}},
        "spec": {"command": ["bash", "-c", "${WORKING_PATH}/run.sh"]}}))
    assert await cli(traincli.main, ["submit", "-f", str(cr), "-c", str(cluster_file)]) == 2  # no password given
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    assert await cli(traincli.main, ["submit", "-f", str(cr), "-c", str(cluster_file),
                                     "--password-file", str(tmp_path / "pw")]) == 0
    job = await call(jobs_api.get_job, "cr-job")
    assert job["spec"]["codePackage"]["passwordSecretRef"]["name"] == "cr-job-code"
    secret = await call(jobs_api.core.read_namespaced_secret, "cr-job-code", NS)
    assert base64.b64decode(secret.data["password"]).decode() == PASSWORD  # the file's newline is not part of it


async def test_a_refused_job_leaves_no_secret_behind(tmp_path: Path, kube_api, cluster_file: Path,
                                                     jobs_api: JobClient, dataspace_env: DataspaceConfig,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    kube_api[f"post {TRAINJOBS}"] << 403 << {"kind": "Status", "status": "Failure", "reason": "Forbidden"}
    assert await cli(traincli.main, ["submit", "-f", str(write_job(tmp_path)), "-c", str(cluster_file)]) == 4
    err = capsys.readouterr().err
    assert "refused our credential" in err and "traincli init" in err
    assert not await call(jobs_api.secret_exists, f"{JOB}-code")


async def test_submit_refuses_a_job_that_exists_and_leaves_it_alone(
        tmp_path: Path, cluster_file: Path, jobs_api: JobClient, dataspace_env: DataspaceConfig,
        capsys: pytest.CaptureFixture[str]) -> None:
    job_file = write_job(tmp_path)
    assert await cli(traincli.main, ["submit", "-f", str(job_file), "-c", str(cluster_file)]) == 0
    out = capsys.readouterr().out
    assert f"traincli -c {cluster_file} status {JOB}" in out and f"logs {JOB} -f" in out
    before = await call(jobs_api.get_job, JOB)
    assert await cli(traincli.main, ["submit", "-f", str(job_file), "-c", str(cluster_file)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert await call(jobs_api.get_job, JOB) == before


async def test_submit_over_the_size_limit_uploads_nothing(tmp_path: Path, cluster_file: Path, jobs_api: JobClient,
                                                          dataspace_env: DataspaceConfig,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    job_file = write_job(tmp_path)
    assert await cli(traincli.main, ["submit", "-f", str(job_file), "-c", str(cluster_file),
                                     "--max-package-size", "1"]) == 2
    assert "over the 1.0 MiB limit" in capsys.readouterr().err
    assert not await call(jobs_api.job_exists, JOB)
    assert not list(open_dataspace(dataspace_env).store.list("codepkgs/"))



# ------------------------------------------------------------------------------------ status and pods


def pod(name: str, *, phase: str = "Pending", containers: list[dict[str, Any]] | None = None,
        init: list[dict[str, Any]] | None = None, conditions: list[dict[str, Any]] | None = None,
        job: str = JOB) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if containers is not None:
        status["containerStatuses"] = [{"name": "trainer", "image": "img", "imageID": "", "ready": False,
                                        "restartCount": c.pop("restarts", 0), **c} for c in containers]
    if init is not None:
        status["initContainerStatuses"] = [{"name": "fetch-code", "image": "img", "imageID": "", "ready": False,
                                            "restartCount": 0, **c} for c in init]
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": {"name": name, "namespace": NS, "labels": {"aidi.io/job": job, "aidi.io/role": "worker"}},
            "spec": {"containers": [{"name": "trainer", "image": "img"}]}, "status": status}


def make_job(jobs_api: JobClient, name: str = JOB, status: dict[str, Any] | None = None,
             spec: dict[str, Any] | None = None) -> None:
    jobs_api.custom.create_namespaced_custom_object("aidi.io", "v1alpha1", NS, "trainjobs", {
        "apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob", "metadata": {"name": name, "namespace": NS},
        "spec": {"command": ["bash", "-c", "true"], **(spec or {})}})
    if status:
        jobs_api.custom.patch_namespaced_custom_object_status("aidi.io", "v1alpha1", NS, "trainjobs", name,
                                                              {"status": status})


FAILING_PODS = {
    f"{JOB}-worker-0": (pod(f"{JOB}-worker-0", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]),
        "Unschedulable", "not enough free GPUs"),
    f"{JOB}-worker-1": (pod(f"{JOB}-worker-1", containers=[{"state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "aidi/jobimage:9.9"'}}}]),
        "ImagePullBackOff", "image cannot be pulled"),
    f"{JOB}-worker-2": (pod(f"{JOB}-worker-2", phase="Running", containers=[{
        "restarts": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]),
        "CrashLoopBackOff", "keeps exiting"),
    f"{JOB}-worker-3": (pod(f"{JOB}-worker-3", phase="Failed", containers=[{
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]),
        "OOMKilled", "ran out of memory"),
    f"{JOB}-worker-4": (pod(f"{JOB}-worker-4", init=[{
        "state": {"terminated": {"exitCode": 6, "reason": "Error", "message": "password is wrong"}}}]),
        "Error", "downloads and unpacks the code package"),
}


async def test_status_explains_each_failure_reason(cluster_file: Path, jobs_api: JobClient,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    await call(make_job, jobs_api, status={
        "phase": "Failed", "reason": "BackoffLimitExceeded", "message": "worker-3 failed 4 times",
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
        "lastFailure": {"pod": f"{JOB}-worker-3", "reason": "OOMKilled", "exitCode": 137}})
    for manifest, _, _ in FAILING_PODS.values():
        await call(jobs_api.core.create_namespaced_pod, NS, manifest)
    await call(jobs_api.core.create_namespaced_pod, NS, pod("other-job-worker-0", job="other-job"))

    assert await cli(traincli.main, ["status", JOB, "-c", str(cluster_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["phase"] == "Failed" and "backoffLimit" in report["explanation"]
    pods = {p["name"]: p for p in report["pods"]}
    assert set(pods) == set(FAILING_PODS), "pods of other jobs must not show"
    for name, (_, reason, words) in FAILING_PODS.items():
        assert pods[name]["reason"] == reason, name
        assert words in pods[name]["explanation"], (name, pods[name]["explanation"])
    assert pods[f"{JOB}-worker-2"]["restarts"] == 4 and "last exit code 1" in pods[f"{JOB}-worker-2"]["message"]
    assert pods[f"{JOB}-worker-3"]["exit_code"] == 137

    assert await cli(traincli.main, ["status", JOB, "-c", str(cluster_file)]) == 0
    text = capsys.readouterr().out
    assert "phase:      Failed — BackoffLimitExceeded" in text
    assert "3 Insufficient nvidia.com/gpu" in text
    assert f"traincli logs {JOB} --worker I --previous" in text
    assert "last failure: pod adasmini-4pe-worker-3 OOMKilled exit code 137" in text


async def test_status_of_a_missing_job(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli(traincli.main, ["status", "nope", "-c", str(cluster_file)]) == 3
    assert "no TrainJob 'nope' in namespace team-a" in capsys.readouterr().err


async def test_list_shows_phases(cluster_file: Path, jobs_api: JobClient, capsys: pytest.CaptureFixture[str]) -> None:
    await call(make_job, jobs_api, "job-b", {"phase": "Running", "workers": {"active": 2}}, {"workers": {"max": 2}})
    await call(make_job, jobs_api, "job-a")
    assert await cli(traincli.main, ["list", "-c", str(cluster_file), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["phase"], r["workers"]) for r in rows] == [("job-a", "Pending", "0/1"),
                                                                     ("job-b", "Running", "2/2")]


# ------------------------------------------------------------------------------------- wait and cancel


@pytest.mark.parametrize(("status", "code", "verdict"), [
    ({"phase": "Succeeded"}, 0, "Succeeded"),
    ({"phase": "Failed", "reason": "DeadlineExceeded", "message": "ran 600s"}, 1, "Failed (DeadlineExceeded"),
    ({"phase": "Running"}, 124, "timed out"),
])
async def test_wait_exit_code_is_the_jobs_result(cluster_file: Path, jobs_api: JobClient,
                                                 capsys: pytest.CaptureFixture[str], status: dict[str, Any],
                                                 code: int, verdict: str) -> None:
    await call(make_job, jobs_api, status=status)
    assert await cli(traincli.main, ["wait", JOB, "-c", str(cluster_file), "--timeout", "0.3",
                                     "--interval", "0.1"]) == code
    assert verdict in capsys.readouterr().out


async def test_wait_follows_the_job_until_it_ends(cluster_file: Path, jobs_api: JobClient,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    await call(make_job, jobs_api, status={"phase": "Pending"})

    def finish_later() -> None:
        time.sleep(0.5)
        jobs_api.custom.patch_namespaced_custom_object_status("aidi.io", "v1alpha1", NS, "trainjobs", JOB,
                                                              {"status": {"phase": "Succeeded"}})

    thread = threading.Thread(target=finish_later)
    thread.start()
    code = await cli(traincli.main, ["wait", JOB, "-c", str(cluster_file), "--timeout", "20", "--interval", "0.1",
                                     "--json"])
    thread.join()
    assert code == 0
    assert json.loads(capsys.readouterr().out)["phase"] == "Succeeded"


async def test_cancel_keeps_the_record_then_delete_removes_it(cluster_file: Path, jobs_api: JobClient,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    await call(make_job, jobs_api, status={"phase": "Running"})
    await call(jobs_api.put_password_secret, f"{JOB}-code", JOB, PASSWORD)
    cfg = ["-c", str(cluster_file)]
    assert await cli(traincli.main, ["cancel", JOB, *cfg]) == 0
    job = await call(jobs_api.get_job, JOB)
    assert job["spec"]["suspend"] is True and job["metadata"]["annotations"]["aidi.io/cancelled-at"]
    assert await cli(traincli.main, ["wait", JOB, *cfg, "--timeout", "5"]) == 125
    assert await cli(traincli.main, ["status", JOB, *cfg]) == 0
    assert "cancelled with `traincli cancel`" in capsys.readouterr().out

    assert await cli(traincli.main, ["resume", JOB, *cfg]) == 0
    assert (await call(jobs_api.get_job, JOB))["spec"]["suspend"] is False

    assert await cli(traincli.main, ["delete", JOB, *cfg, "--json"]) == 0
    capsys.readouterr()
    with pytest.raises(NotFoundError):
        await call(jobs_api.get_job, JOB)
    assert not await call(jobs_api.secret_exists, f"{JOB}-code")


async def test_cancel_of_a_finished_job_is_refused(cluster_file: Path, jobs_api: JobClient,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    await call(make_job, jobs_api, status={"phase": "Succeeded"})
    assert await cli(traincli.main, ["cancel", JOB, "-c", str(cluster_file)]) == 2
    assert "already Succeeded" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- logs


async def test_logs_of_a_worker(kube_api, cluster_file: Path, jobs_api: JobClient,
                                capsys: pytest.CaptureFixture[str]) -> None:
    await call(make_job, jobs_api)
    await call(jobs_api.core.create_namespaced_pod, NS, pod(f"{JOB}-worker-0", phase="Running", containers=[]))
    log_url = f"/api/v1/namespaces/{NS}/pods/{JOB}-worker-0/log"
    kube_api[f"get {log_url}"] << {"Content-Type": "text/plain"} << b"step 1/10 loss 0.9\nstep 2/10 loss 0.7\n"
    for extra in ([], ["-f"]):
        assert await cli(traincli.main, ["logs", JOB, "-c", str(cluster_file), *extra]) == 0
        assert capsys.readouterr().out == "step 1/10 loss 0.9\nstep 2/10 loss 0.7\n"
    requested = [str(r.url) for r in list(kube_api) if log_url in str(r.url)]
    assert requested and all("container=trainer" in url for url in requested)
    assert any("follow=true" in url for url in requested)

    assert await cli(traincli.main, ["logs", JOB, "--worker", "3", "-c", str(cluster_file)]) == 3
    assert f"no pod {JOB}-worker-3 (pods now: {JOB}-worker-0)" in capsys.readouterr().err


async def test_logs_of_a_failed_pod_that_is_gone_come_from_the_status(cluster_file: Path, jobs_api: JobClient,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    await call(make_job, jobs_api, status={"phase": "Failed", "lastFailure": {
        "pod": f"{JOB}-worker-0", "reason": "Error", "exitCode": 1, "logTail": "Traceback ...\nValueError: nan\n"}})
    assert await cli(traincli.main, ["logs", JOB, "-c", str(cluster_file)]) == 0
    out, err = capsys.readouterr()
    assert out == "Traceback ...\nValueError: nan\n" and "is gone" in err
    assert await cli(traincli.main, ["logs", JOB, "--worker", "1", "-c", str(cluster_file)]) == 3


class FlakyJobs:
    """A JobClient stand-in whose API server is unreachable for the first ``down`` calls."""

    namespace = NS

    def __init__(self, down: int) -> None:
        self.down, self.calls = down, 0

    def get_job(self, name: str) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionFailed("get TrainJob: cannot reach the cluster's API server")
        return {"metadata": {"name": name}, "spec": {}, "status": {"phase": "Succeeded"}}


def test_wait_outlasts_a_short_api_outage_but_not_a_long_one() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    flaky = FlakyJobs(down=3)
    result = jobs.wait(flaky, JOB, interval=10, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
    assert (result.phase, result.exit_code, flaky.calls) == ("Succeeded", 0, 4)
    with pytest.raises(ConnectionFailed):
        jobs.wait(FlakyJobs(down=10_000), JOB, interval=10, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
