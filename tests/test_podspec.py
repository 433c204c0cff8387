"""The spec→manifest builders: what each pod of a job looks like, checked against Kubernetes' own schema."""

from __future__ import annotations

import subprocess
from typing import Any

import kubernetes_validate
import pytest

from aidi.api import trainjob as tj
from aidi.api.loader import load_file
from aidi.jobs import podspec
from tests.conftest import REPO

SETTINGS = podspec.PodSettings(job_image="registry.local/aidi/jobimage:1", fetch_image="registry.local/aidi/op:1",
                               dataspace_endpoint="http://minio.aidi:9000", dataspace_bucket="aidi",
                               dataspace_secret="aidi-dataspace")


def job(**spec: Any) -> tj.TrainJob:
    body = {"command": ["bash", "-c", "${WORKING_PATH}/run.sh"]} | spec
    return tj.TrainJob.model_validate({"metadata": {"name": "j", "namespace": "team-a"}, "spec": body})


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.mark.parametrize("version", ["1.28", "1.33"])
def test_every_manifest_of_the_example_validates_against_the_kubernetes_schema(version: str) -> None:
    example = load_file(REPO / "examples" / "trainjob.yaml").job
    multi = example.model_copy(deep=True)
    multi.spec.workers = tj.WorkerRange(min=2, max=3)
    multi.spec.scheduler_name = "volcano"
    multi.spec.queue_name = "team-a"
    multi.spec.tolerations = [tj.Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    multi.spec.image_pull_secrets = [tj.LocalObjectReference(name="regcred")]
    multi.spec.resources = tj.Resources(requests={"cpu": 8, "memory": "32Gi"}, limits={"memory": "48Gi"})
    for j in (example, multi):
        manifests = [*podspec.build_pods(j, SETTINGS, owner_uid="0b5c", deadline_seconds=600),
                     podspec.build_service(j, "0b5c")]
        for manifest in filter(None, manifests):
            kubernetes_validate.validate(manifest, version, strict=True)


def test_single_worker_pod_follows_the_pod_contract() -> None:
    example = load_file(REPO / "examples" / "trainjob.yaml").job
    (pod,) = podspec.build_pods(example, SETTINGS, attempt=2, owner_uid="uid-1", deadline_seconds=90)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "adasmini-4pe-worker-0" and meta["namespace"] == "team-a"
    assert meta["labels"] == {podspec.LABEL_JOB: "adasmini-4pe", podspec.LABEL_ROLE: "worker",
                              podspec.LABEL_INDEX: "0", podspec.LABEL_ATTEMPT: "2",
                              podspec.LABEL_PROJECT: "PDT2021005", podspec.LABEL_MANAGED_BY: "aidi-operator"}
    assert meta["ownerReferences"] == [{"apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob",
                                        "name": "adasmini-4pe", "uid": "uid-1", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert spec["priorityClassName"] == "aidi-priority-5"
    assert spec["activeDeadlineSeconds"] == 90
    assert spec["restartPolicy"] == "Never"
    assert "subdomain" not in spec  # one worker: no parameter servers, no Service

    # The init step fetches the code package, the datasets and the last checkpoint (docs/architecture.md).
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-code", "fetch-data", "fetch-checkpoint"]
    assert container(pod, "fetch-checkpoint")["command"] == [
        "aidi", "fetch-checkpoint", "--prefix", "checkpoints/team-a/adasmini-4pe/uid-1/", "--dest",
        "/data_space/output", "--message-file", "/dev/termination-log"]
    assert container(pod, "fetch-code")["command"] == [
        "aidi", "fetch-code", example.spec.code_package.uri, "--password-file", "/var/run/aidi/code/password",
        "--dest", "/job/code"]
    # Worker 0, the one that syncs the outputs, records what it fetched among them (lineage).
    assert container(pod, "fetch-data")["command"] == [
        "aidi", "fetch-data", "--dest", "/data_space/input", "--record", "/data_space/output/aidi-job.json",
        "adasmini_4pe:trainset:latest"]
    assert {"name": "data-output", "mountPath": "/data_space/output"} in container(pod, "fetch-data")["volumeMounts"]
    assert container(pod, "fetch-code")["image"] == SETTINGS.fetch_image
    password = next(v for v in spec["volumes"] if v["name"] == "code-password")
    assert password["secret"]["secretName"] == "adasmini-4pe-code"
    assert password["secret"]["items"] == [{"key": "password", "path": "password"}]

    main = container(pod, "trainer")
    assert main["image"] == "aidi/jobimage:0.1.0"  # the job's image wins over the default
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "4"
    e = env(main)
    assert e["JOB_NAME"] == "adasmini-4pe" and e["WORKING_PATH"] == "/job/code"
    assert (e["AIDI_WORKER_INDEX"], e["AIDI_WORKER_COUNT"]) == ("0", "1")
    assert e["AIDI_DATASPACE_ENDPOINT"] == "http://minio.aidi:9000"
    assert e["AIDI_DATASPACE_SECRET_KEY"] == {"secretKeyRef": {"name": "aidi-dataspace", "key": "secretKey",
                                                               "optional": True}}
    assert not any(k.startswith("DMLC_") for k in e)
    # What the job record names: the job (uid from the owner), its image, its code package's sha256.
    assert (e["AIDI_JOB_NAMESPACE"], e["AIDI_JOB_UID"], e["AIDI_JOB_IMAGE"]) == ("team-a", "uid-1",
                                                                                 "aidi/jobimage:0.1.0")
    assert e["AIDI_CODE_SHA256"] == podspec.code_sha256(example) and \
        example.spec.code_package.uri.endswith(f"/{e['AIDI_CODE_SHA256']}.tar.gz.enc")
    # The outputs are synced by worker 0 after the trainer exits.
    sync = container(pod, "sync-output")
    assert "aidi sync-output --src /data_space/output --name adasmini_4pe_models --type dataset" \
        in sync["command"][2]
    assert main["command"][:2] == ["sh", "-c"] and main["command"][4:] == example.spec.command
    # ... and the checkpoints copied beside the trainer meanwhile, every 10 minutes by default.
    assert ("aidi sync-checkpoints --prefix checkpoints/team-a/adasmini-4pe/uid-1/ --src /data_space/output "
            "--attempt 2 --interval 600 --until /var/run/aidi/done/exit-code --rank-file /var/run/aidi/done/rank "
            "--staging /var/run/aidi/done/staging &") \
        in sync["command"][2]
    assert e["AIDI_RANK_FILE"] == "/var/run/aidi/done/rank"  # the trainer says there whether it is the chief


def test_checkpoint_sync_follows_spec_checkpoints_on_every_worker() -> None:
    out = {"dataSpace": {"output": {"name": "m"}}}
    tuned = job(workers={"min": 2, "max": 2}, checkpoints={"intervalSeconds": 0, "maxBytesPerSecond": 1 << 20},
                **out)
    pods = {p["metadata"]["name"]: p for p in podspec.build_pods(tuned, SETTINGS, attempt=1, owner_uid="u")}
    # ps-lite's rank 0 (the chief, which writes the checkpoints) may be any worker's pod: every worker restores
    # and runs the copy loop, which copies only where the trainer's rank file says 0.
    for name, pod in pods.items():
        names = [c["name"] for c in pod["spec"].get("initContainers", [])]
        assert ("fetch-checkpoint" in names) == name.startswith("j-worker-"), name
        containers = [c["name"] for c in pod["spec"]["containers"]]
        assert containers == (["trainer", "sync-output"] if name.startswith("j-worker-") else ["trainer"]), name
    script = container(pods["j-worker-1"], "sync-output")["command"][2]
    assert ("--attempt 1 --interval 0 --until /var/run/aidi/done/exit-code --rank-file /var/run/aidi/done/rank "
            "--staging /var/run/aidi/done/staging --max-bytes-per-second 1048576 &") in script
    assert "aidi delete-checkpoints --prefix checkpoints/team-a/j/u/" in script  # after a success only
    off = job(checkpoints={"enabled": False}, **out)
    (pod,) = podspec.build_pods(off, SETTINGS)
    assert "fetch-checkpoint" not in [c["name"] for c in pod["spec"].get("initContainers", [])]
    assert "checkpoints" not in container(pod, "sync-output")["command"][2]
    # Without an output dataset the job keeps nothing in the dataspace: no checkpoints either.
    (pod,) = podspec.build_pods(job(), SETTINGS)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["trainer"]


def test_only_the_fetch_step_sees_the_code_password() -> None:
    example = load_file(REPO / "examples" / "trainjob.yaml").job
    for pod in podspec.build_pods(example, SETTINGS):
        spec = pod["spec"]
        mounting = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]
                    if any(m["name"] == "code-password" for m in c["volumeMounts"])]
        assert mounting == ["fetch-code"]
        assert "password" not in str([c.get("env") for c in spec["containers"]]).lower()


def test_multi_worker_job_gets_mxnet_parameter_servers_like_kubeflow_mxjob() -> None:
    j = job(workers={"min": 3, "max": 3}, parameterServers=2, gpusPerWorker=2)
    pods = {p["metadata"]["name"]: p for p in podspec.build_pods(j, SETTINGS)}
    assert list(pods) == ["j-scheduler", "j-server-0", "j-server-1", "j-worker-0", "j-worker-1", "j-worker-2"]
    for name, pod in pods.items():
        e = env(container(pod, "trainer"))
        assert e["DMLC_PS_ROOT_URI"] == "j-scheduler.j"
        assert (e["DMLC_PS_ROOT_PORT"], e["DMLC_NUM_SERVER"], e["DMLC_NUM_WORKER"]) == ("9091", "2", "3")
        assert e["DMLC_ROLE"] == pod["metadata"]["labels"][podspec.LABEL_ROLE]
        assert e["DMLC_USE_KUBERNETES"] == "1"  # the scheduler binds 0.0.0.0, not the Service name
        assert pod["spec"]["hostname"] == name and pod["spec"]["subdomain"] == "j"
    assert env(container(pods["j-worker-2"], "trainer"))["AIDI_WORKER_INDEX"] == "2"
    assert container(pods["j-server-0"], "trainer")["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}}
    assert container(pods["j-worker-0"], "trainer")["resources"]["requests"]["nvidia.com/gpu"] == "2"
    service = podspec.build_service(j, "u")
    assert service["metadata"]["name"] == "j" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert podspec.build_service(job(), "u") is None


def test_gang_scheduling_and_kueue() -> None:
    j = job(workers={"min": 2, "max": 2}, schedulerName="volcano", minAvailable=3, queueName="team-a-gpu")
    group = podspec.build_podgroup(j, "u")
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"]["minMember"] == 3
    pod = podspec.build_pods(j, SETTINGS)[0]
    assert pod["spec"]["schedulerName"] == "volcano"
    assert pod["metadata"]["annotations"][podspec.VOLCANO_GROUP_ANNOTATION] == "j"
    assert pod["metadata"]["labels"][podspec.KUEUE_QUEUE_LABEL] == "team-a-gpu"
    assert pod["metadata"]["annotations"][podspec.KUEUE_GROUP_TOTAL] == "5"  # 2 workers, 2 servers, 1 scheduler
    assert podspec.build_podgroup(job(), "u") is None
    assert podspec.build_podgroup(job(workers={"min": 1, "max": 4}, schedulerName="volcano"))["spec"][
        "minMember"] == 9


def test_pod_options_are_copied() -> None:
    j = job(nodeSelector={"gpu": "a100"}, tolerations=[{"key": "gpu", "operator": "Exists"}],
            imagePullSecrets=[{"name": "regcred"}], env=[{"name": "EPOCHS", "value": "3"}],
            resources={"requests": {"cpu": 4}, "limits": {"memory": "16Gi"}}, gpusPerWorker=0)
    pod = podspec.build_pods(j, SETTINGS)[0]
    assert pod["spec"]["nodeSelector"] == {"gpu": "a100"}
    # The job's own, then the shorter wait on a lost node that restarts the gang within a minute.
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}] + [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
        for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")]
    patient = job(tolerations=[{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                "effect": "NoExecute", "tolerationSeconds": 600}])
    assert [t.get("tolerationSeconds") for t in podspec.build_pods(patient, SETTINGS)[0]["spec"]["tolerations"]] \
        == [600, 60]  # a job that says how long to wait on its node keeps its word
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    main = container(pod, "trainer")
    assert main["image"] == SETTINGS.job_image
    assert env(main)["EPOCHS"] == "3"
    assert main["resources"] == {"requests": {"cpu": "4"}, "limits": {"memory": "16Gi"}}  # no GPU asked
    assert "initContainers" not in pod["spec"]  # no code package, no inputs: nothing to fetch
    assert "ownerReferences" not in pod["metadata"]  # the local runner has no owner


def test_trainer_wrapper_forwards_exit_code_and_the_sync_step_waits_for_it(tmp_path) -> None:
    """Run the two shell programs for real: the wrapper writes the exit code, the sync step reads it."""
    j = job(dataSpace={"output": {"name": "models"}})
    pod = podspec.build_pods(j, SETTINGS)[0]
    done = tmp_path / "done"
    done.mkdir()
    wrapper = container(pod, "trainer")["command"][2].replace(podspec.DONE_DIR, str(done))
    result = subprocess.run(["sh", "-c", wrapper, "aidi-trainer", "sh", "-c", "echo training; exit 3"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 3 and "training" in result.stdout
    assert (done / "exit-code").read_text().strip() == "3"
    # A stand-in `aidi` on PATH says which pod steps the sync container runs, in order.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aidi").write_text('#!/bin/sh\necho "aidi $1"\n')
    (bin_dir / "aidi").chmod(0o755)
    path = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    sync = container(pod, "sync-output")["command"][2].replace(podspec.DONE_DIR, str(done))
    result = subprocess.run(["sh", "-c", sync], capture_output=True, text=True, timeout=20, env=path)
    assert result.returncode == 0 and "exited with code 3; outputs not synced" in result.stdout
    # A failed run keeps its checkpoints: copied until the end, never deleted.
    assert [line for line in result.stdout.splitlines() if line.startswith("aidi")] == ["aidi sync-checkpoints"]

    # After a success: the last checkpoint copy, the outputs, then the checkpoints go (the version is final).
    (done / "exit-code").write_text("0\n")
    result = subprocess.run(["sh", "-c", sync], capture_output=True, text=True, timeout=20, env=path)
    assert result.returncode == 0
    assert result.stdout.split("\n")[:3] == ["aidi sync-checkpoints", "aidi sync-output", "aidi delete-checkpoints"]
    # Only the chief's pod (the trainer's rank 0; worker 0's when the trainer does not say) syncs the outputs.
    (done / "rank").write_text("1\n")
    result = subprocess.run(["sh", "-c", sync], capture_output=True, text=True, timeout=20, env=path)
    assert result.returncode == 0 and "rank 1: the chief's pod (rank 0) syncs the outputs" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("aidi")] == ["aidi sync-checkpoints"]
    (done / "rank").unlink()
    result = subprocess.run(["sh", "-c", sync], capture_output=True, text=True, timeout=20,
                            env=path | {"AIDI_WORKER_INDEX": "1"})
    assert "rank 1: the chief's pod" in result.stdout
    plain = podspec.build_pods(job(dataSpace={"output": {"name": "models"}}, checkpoints={"enabled": False}),
                               SETTINGS)[0]
    sync = container(plain, "sync-output")["command"][2].replace(podspec.DONE_DIR, str(done))
    (bin_dir / "aidi").write_text('#!/bin/sh\necho "aidi $*"\n')
    result = subprocess.run(["sh", "-c", sync], capture_output=True, text=True, timeout=20, env=path)
    assert result.returncode == 0
    assert result.stdout.strip() == "aidi sync-output --src /data_space/output --name models --type dataset"


def test_the_aidi_form_sets_the_checkpoint_sync() -> None:
    from aidi.api import aidi_form

    required = {"JOB_NAME": "j", "JOB_PASSWD": "pw", "UPLOAD_DIR": "./code", "PROJECT_ID": "P1", "WORKER_MIN_NUM": 1,
                "WORKER_MAX_NUM": 1, "GPU_PER_WORKER": 1, "RUN_SCRIPTS": "${WORKING_PATH}/run.sh"}
    cases = [({}, (True, 600)), ({"CHECKPOINT_MINUTES": 0}, (True, 0)), ({"CHECKPOINT_MINUTES": 30}, (True, 1800)),
             ({"CHECKPOINT_SYNC": False}, (False, 600))]
    for optional, (enabled, seconds) in cases:
        parsed, errors = aidi_form.parse({"REQUIRED": required, "OPTIONAL": optional})
        assert parsed is not None and not errors, errors
        sync = aidi_form.to_trainjob(parsed).spec.checkpoints
        assert (sync.enabled, sync.interval_seconds) == (enabled, seconds), optional
    _, errors = aidi_form.parse({"REQUIRED": required, "OPTIONAL": {"CHECKPOINT_MINUTES": -1}})
    assert [e.path for e in errors] == ["OPTIONAL.CHECKPOINT_MINUTES"]
