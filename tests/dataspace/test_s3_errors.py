"""What the S3 backend does when the server says no, is not there, or hiccups."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from minio.error import S3Error

from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.dataspace.s3 import S3Store
from aidi.dataspace.store import ObjectExists
from aidi.errors import AidiError, AuthError, ConnectionFailed, NotFoundError
from tests.support.seaweedfs import free_port


def _config(s3_server, **changes) -> DataspaceConfig:
    values = {"endpoint": s3_server.endpoint, "bucket": f"t-{uuid.uuid4().hex[:12]}",
              "access_key": s3_server.access_key, "secret_key": s3_server.secret_key} | changes
    return DataspaceConfig(**values)


def test_wrong_secret_is_an_auth_error_without_the_secret(s3_server) -> None:
    good = _config(s3_server)
    open_dataspace(good).store.check(create=True)
    secret = "wrong-" + uuid.uuid4().hex
    bad = open_dataspace(_config(s3_server, bucket=good.bucket, secret_key=secret))
    with pytest.raises(AuthError) as caught:
        bad.list_datasets()
    message = str(caught.value)
    assert "hitc init" in message and s3_server.access_key in message
    assert secret not in message and secret not in repr(bad.store.config)


def test_missing_bucket_says_how_to_create_it(s3_server) -> None:
    ds = open_dataspace(_config(s3_server))
    with pytest.raises(NotFoundError, match=r"bucket 't-.*' does not exist.*--create-bucket"):
        ds.store.check()
    with pytest.raises(NotFoundError, match="does not exist"):
        ds.list_datasets()
    ds.store.check(create=True)
    assert ds.list_datasets() == []


def test_unreachable_endpoint_fails_fast(s3_server) -> None:
    ds = open_dataspace(_config(s3_server, endpoint=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ConnectionFailed, match=r"cannot reach the dataspace at http://127\.0\.0\.1:\d+ .*refused"):
        ds.store.check()


def test_transient_errors_are_retried_with_backoff(s3_server, monkeypatch) -> None:
    store = open_dataspace(_config(s3_server)).store
    assert isinstance(store, S3Store)
    sleeps: list[float] = []
    monkeypatch.setattr("aidi.dataspace.s3.time.sleep", sleeps.append)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise S3Error(None, "SlowDown", "reduce your request rate", "x", "r", "h", None)
        return "ok"

    assert store._call("test", flaky) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0]

    def always_busy() -> None:
        raise S3Error(None, "ServiceUnavailable", "busy", "x", "r", "h", None)

    with pytest.raises(ConnectionFailed, match=r"kept failing.*after 5 attempts"):
        store._call("test", always_busy)

    denied = []

    def refused() -> None:
        denied.append(1)
        raise S3Error(None, "AccessDenied", "no", "x", "r", "h", None)

    with pytest.raises(AuthError):
        store._call("test", refused)
    assert len(denied) == 1  # refused credentials are not retried


def test_big_files_go_up_in_parallel_parts(s3_server, tmp_path: Path) -> None:
    config = _config(s3_server)
    store = S3Store(config, part_size=5 * 1024 * 1024)
    store.check(create=True)
    data = (bytes(range(256)) * 4096) * 11  # 11 MiB: three parts
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store.put_file("big.bin", src, metadata={"sha256": digest})
    stat = store.client.stat_object(config.bucket, "big.bin")
    assert stat.etag.endswith("-3")  # a multipart object's ETag counts its parts
    assert store.stat("big.bin").sha256 == digest
    store.get_file("big.bin", tmp_path / "back.bin", sha256=digest)
    assert (tmp_path / "back.bin").read_bytes() == data


def test_a_resumed_upload_discards_the_parts_its_killed_attempt_left(s3_server, tmp_path: Path) -> None:
    from aidi.dataspace.datasets import PENDING, local_fingerprint
    from aidi.dataspace.files import dataset_files

    config = _config(s3_server)
    ds = open_dataspace(config)
    ds.store.check(create=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"a" * 1000)
    prefix = "datasets/n/dataset/v1/"
    ds.store.put_bytes(prefix + PENDING, json.dumps({"fingerprint": local_fingerprint(
        dataset_files(tmp_path / "d"))}).encode())
    client = ds.store.client
    upload_id = client._create_multipart_upload(config.bucket, prefix + "big.bin", {})
    client._upload_part(config.bucket, prefix + "big.bin", b"x" * (5 << 20), None, upload_id, 1)
    assert len(client._list_multipart_uploads(config.bucket, prefix=prefix).uploads) == 1

    assert ds.upload_dataset("n", "dataset", tmp_path / "d").version == "v1"
    assert client._list_multipart_uploads(config.bucket, prefix=prefix).uploads == []


def test_a_create_only_multipart_upload_is_refused_at_completion(s3_server, tmp_path: Path) -> None:
    store = S3Store(_config(s3_server), part_size=5 * 1024 * 1024)
    store.check(create=True)
    src = tmp_path / "big.bin"
    src.write_bytes(b"a" * (6 * 1024 * 1024))  # two parts
    store.put_file("big.bin", src, metadata={"sha256": "a"}, create_only=True)
    src.write_bytes(b"b" * (6 * 1024 * 1024))
    with pytest.raises(ObjectExists):
        store.put_file("big.bin", src, metadata={"sha256": "b"}, create_only=True)
    assert store.get_bytes("big.bin")[:1] == b"a" and store.stat("big.bin").sha256 == "a"
    assert store.abort_uploads("") <= 1  # the refused upload's parts, if the server kept them


def test_a_server_that_ignores_conditional_writes_is_refused(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3Store(_config(s3_server))
    store.check(create=True)
    put = store.client._put_object

    def without_conditions(bucket, key, data, headers=None, query_params=None):  # an old server: no If-None-Match
        return put(bucket, key, data, headers={k: v for k, v in (headers or {}).items() if k != "If-None-Match"})

    monkeypatch.setattr(store.client, "_put_object", without_conditions)
    with pytest.raises(AidiError, match=r"does not support conditional writes \(If-None-Match: \*\).*upgrade"):
        store.put_bytes("datasets/x/trainset/v1/_claim.json", b"{}", create_only=True)
    assert store.stat("datasets/x/trainset/v1/_claim.json") is None
    assert list(store.list("_aidi/")) == []  # the scratch object is gone
