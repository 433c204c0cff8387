"""Per-team dataspace accounts, enforced by the S3 server itself (docs/security.md, "The dataspace").

The session's SeaweedFS has one identity per team, limited as the chart's MinIO policies limit a team's
user: read and write its own bucket, only read the shared one. Team A's credential must not list, read
or write team B's bucket — whatever our client does — and `hitc` must say so in one line.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import minio
import pytest
from minio.error import S3Error

from aidi.cli import hitc
from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.errors import AuthError
from aidi.recordio import IndexedRecordWriter


def make_rec(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with IndexedRecordWriter(folder / "train.rec", folder / "train.idx") as writer:
        writer.write(0, b"record")
    return folder


@pytest.fixture()
def objects(s3_server) -> Iterator[dict[str, str]]:
    """One object of each team and one shared, under names of this test only (removed afterwards)."""
    admin = minio.Minio(s3_server.host, access_key=s3_server.access_key, secret_key=s3_server.secret_key,
                        secure=False)
    run = uuid.uuid4().hex[:8]
    a, b = s3_server.teams["team-a"], s3_server.teams["team-b"]
    made = {a.bucket: f"isolation-{run}/a.txt", b.bucket: f"isolation-{run}/b.txt",
            a.shared_bucket: f"isolation-{run}/shared.txt"}
    for bucket, key in made.items():
        admin.put_object(bucket, key, io.BytesIO(b"data"), 4)
    yield {"run": run, **made}
    for bucket in made:
        for obj in admin.list_objects(bucket, prefix=f"isolation-{run}/", recursive=True):
            admin.remove_object(bucket, obj.object_name or "")


def _denied(call: Callable[[], object]) -> bool:
    try:
        call()
    except S3Error as exc:
        return exc.code == "AccessDenied"
    return False


def test_a_team_credential_cannot_list_read_or_write_another_teams_bucket(s3_server, objects) -> None:
    a, b = s3_server.teams["team-a"], s3_server.teams["team-b"]
    as_a = minio.Minio(s3_server.host, access_key=a.access_key, secret_key=a.secret_key, secure=False)
    prefix = f"isolation-{objects['run']}/"
    # Its own bucket: everything.
    assert [o.object_name for o in as_a.list_objects(a.bucket, prefix=prefix)] == [objects[a.bucket]]
    assert as_a.get_object(a.bucket, objects[a.bucket]).read() == b"data"
    as_a.put_object(a.bucket, prefix + "new.txt", io.BytesIO(b"x"), 1)
    # Team B's: nothing — not a listing, not a read, not a stat, not a write, not a delete.
    assert _denied(lambda: list(as_a.list_objects(b.bucket, prefix=prefix)))
    assert _denied(lambda: list(as_a.list_objects(b.bucket, recursive=True)))
    assert _denied(lambda: as_a.get_object(b.bucket, objects[b.bucket]).read())
    assert _denied(lambda: as_a.stat_object(b.bucket, objects[b.bucket]))
    assert _denied(lambda: as_a.put_object(b.bucket, prefix + "planted.txt", io.BytesIO(b"x"), 1))
    assert _denied(lambda: as_a.remove_object(b.bucket, objects[b.bucket]))
    # What the platform shares on purpose: read, never written.
    assert as_a.get_object(a.shared_bucket, objects[a.shared_bucket]).read() == b"data"
    assert _denied(lambda: as_a.put_object(a.shared_bucket, prefix + "planted.txt", io.BytesIO(b"x"), 1))
    # And the same holds the other way round.
    as_b = minio.Minio(s3_server.host, access_key=b.access_key, secret_key=b.secret_key, secure=False)
    assert _denied(lambda: as_b.get_object(a.bucket, objects[a.bucket]).read())


def test_the_dataspace_client_works_in_its_own_bucket_and_names_the_team_when_refused(
        s3_server, objects, tmp_path: Path) -> None:
    a, b = s3_server.teams["team-a"], s3_server.teams["team-b"]
    name = f"iso_{objects['run']}"
    own = open_dataspace(DataspaceConfig(endpoint=s3_server.endpoint, bucket=a.bucket, access_key=a.access_key,
                                         secret_key=a.secret_key))
    tree = make_rec(tmp_path / "rec")
    try:
        assert own.upload_dataset(name, "trainset", tree).version == "v1"   # create-only writes included
        assert [s.name for s in own.list_datasets() if s.name == name] == [name]
    finally:
        own.store.delete_prefix(f"datasets/{name}/")
    other = open_dataspace(DataspaceConfig(endpoint=s3_server.endpoint, bucket=b.bucket, access_key=a.access_key,
                                           secret_key=a.secret_key))
    with pytest.raises(AuthError) as refused:
        other.list_datasets()
    assert str(refused.value).startswith(f"access denied to s3://{b.bucket}/")
    assert "your dataspace credential is for team team-a" in str(refused.value)
    with pytest.raises(AuthError, match="is for team team-a"):
        other.upload_dataset(name, "trainset", tree)


def test_hitc_says_which_team_the_credential_is_for_in_one_line(s3_server, objects, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = s3_server.teams["team-a"], s3_server.teams["team-b"]
    for var in ("ENDPOINT", "BUCKET", "ACCESS_KEY", "SECRET_KEY", "TEAM_BUCKET"):
        monkeypatch.delenv(f"AIDI_DATASPACE_{var}", raising=False)
    config = DataspaceConfig(endpoint=s3_server.endpoint, bucket=b.bucket, access_key=a.access_key,
                             secret_key=a.secret_key).save(tmp_path / "olympus.yaml")
    for argv in (["dataspace", "list"], ["dataspace", "upload", "-n", "planted", "-t", "trainset", "-f",
                                         str(make_rec(tmp_path / "up"))]):
        assert hitc.main([*argv, "-C", str(config)]) == 4
        out, err = capsys.readouterr()
        assert err.startswith(f"hitc: error: access denied to s3://{b.bucket}/"), err
        assert "your dataspace credential is for team team-a" in err and err.count("\n") == 1
        assert "Traceback" not in err and a.secret_key not in out + err


def test_job_pods_use_their_team_bucket_from_its_secret() -> None:
    from aidi.api import trainjob as tj
    from aidi.jobs import podspec

    env = {"AIDI_DATASPACE_ENDPOINT": "http://s3:9000", "AIDI_DATASPACE_BUCKET": "aidi",
           "AIDI_DATASPACE_TEAM_BUCKET": "aidi-team-a"}
    assert DataspaceConfig.from_env(env).bucket == "aidi-team-a"
    assert DataspaceConfig.from_env({**env, "AIDI_DATASPACE_TEAM_BUCKET": ""}).bucket == "aidi"
    job = tj.TrainJob.model_validate({"apiVersion": tj.API_VERSION, "kind": tj.KIND,
                                      "metadata": {"name": "j", "namespace": "team-a"},
                                      "spec": {"image": "img", "command": ["true"]}})
    pod = podspec.build_pods(job, podspec.PodSettings(dataspace_endpoint="http://s3:9000"))[0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for c in pod["spec"]["containers"] for e in c["env"]
            if "valueFrom" in e}
    assert refs["AIDI_DATASPACE_TEAM_BUCKET"] == {"name": "aidi-dataspace", "key": "bucket", "optional": True}
