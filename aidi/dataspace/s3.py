"""The S3 object store (MinIO, SeaweedFS, AWS) through the ``minio`` client.

Big files go up in multipart uploads with parts in parallel; every call is retried with exponential
backoff on transient failures (connection resets, 5xx, SlowDown). Errors a user can fix become one
``aidi.errors`` line: credentials refused (``AuthError``), endpoint unreachable (``ConnectionFailed``),
bucket missing (``NotFoundError``). The secret key appears in none of them.

``create_only`` writes send ``If-None-Match: *`` (on the PUT, or on the CompleteMultipartUpload of a
multipart upload); the server answers 412 when the key exists, which becomes ``ObjectExists``. MinIO,
AWS S3 and SeaweedFS (4.48, tested by tests/dataspace/test_store.py) decide this atomically. A server
that ignores the header would silently replace the object, so the first create-only write of a store
checks once that the server refuses a second create of the same (scratch) key.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import logging
import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio import time as minio_time
from minio.credentials import Credentials
from minio.error import InvalidResponseError, S3Error, ServerError

from aidi.dataspace.endpoint import DataspaceConfig
from aidi.dataspace.store import BytesCallback, ObjectExists, ObjectInfo, ObjectStore, check_key, download_mode
from aidi.errors import AidiError, AuthError, ConnectionFailed, IntegrityError, NotFoundError

# minio's type for a header's value.
HeaderValue = str | list[str] | tuple[str]

log = logging.getLogger(__name__)


def _quiet_retries(record: logging.LogRecord) -> bool:
    """urllib3 logs each connection retry as a warning ("Retrying (Retry(total=2, ...))"): lines a user cannot
    act on, printed before the one line that says what failed and what to do. Kept under -v (debug)."""
    return not str(record.msg).startswith("Retrying") or logging.getLogger().level <= logging.DEBUG


logging.getLogger("urllib3.connectionpool").addFilter(_quiet_retries)

T = TypeVar("T")

META_PREFIX = "x-amz-meta-"
PART_SIZE = 16 * 1024 * 1024
PARALLEL_PARTS = 4
_CHUNK = 1 << 20
ATTEMPTS = 5
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "AuthorizationHeaderMalformed"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                    "OperationAborted", "XMinioServerNotInitialized"}


_KNOWN_SHA256 = "x-aidi-known-sha256"
# Set (per thread) while a create-only multipart upload runs: its CompleteMultipartUpload gets the condition.
_create_only = threading.local()
CONDITION_PROBE = "_aidi/conditional-write-probe/"


class _Minio(Minio):
    """``Minio`` that signs a request with a payload sha256 we computed already.

    Over plain HTTP the stock client hashes every body again to sign it (and over HTTPS computes an MD5
    instead); the dataspace has just hashed the file for its manifest, and that hash is exactly the
    payload hash of a single-part PUT. Reusing it saves a full pass over the data, and servers that
    verify payload hashes (MinIO, AWS S3) still check the body against it. This overrides a private
    method of minio 7.2 (pinned <8 in pyproject.toml; every S3 test goes through it).
    """

    def _build_headers(self, host: str, headers: dict[str, HeaderValue] | None = None, body: bytes | None = None,
                       creds: Credentials | None = None) -> tuple[dict[str, HeaderValue], datetime.datetime]:
        headers = headers or {}
        known = headers.pop(_KNOWN_SHA256, None)
        if known is None or creds is None:
            return super()._build_headers(host, headers, body, creds)
        headers["Host"] = host
        headers["User-Agent"] = self._user_agent
        if body:
            headers["Content-Length"] = str(len(body))
        headers["x-amz-content-sha256"] = known
        if creds.session_token:
            headers["X-Amz-Security-Token"] = creds.session_token
        date = minio_time.utcnow()
        headers["x-amz-date"] = minio_time.to_amz_date(date)
        return headers, date

    def _execute(self, method: str, bucket_name: str | None = None, object_name: str | None = None,
                 body: bytes | None = None, headers: dict[str, HeaderValue] | None = None,
                 query_params: dict[str, HeaderValue] | None = None, preload_content: bool = True,
                 no_body_trace: bool = False) -> urllib3.BaseHTTPResponse:
        """minio completes multipart uploads with no way to pass a header; a create-only one needs
        ``If-None-Match: *`` exactly there (the parts themselves are invisible until then)."""
        if method == "POST" and "uploadId" in (query_params or {}) and getattr(_create_only, "active", False):
            headers = {**(headers or {}), "If-None-Match": "*"}
        return super()._execute(method, bucket_name, object_name, body=body, headers=headers,
                                query_params=query_params, preload_content=preload_content,
                                no_body_trace=no_body_trace)


class S3Store(ObjectStore):
    def __init__(self, config: DataspaceConfig, jobs: int = 8, part_size: int = PART_SIZE) -> None:
        parts = urlsplit(config.endpoint)
        self.part_size = part_size  # S3's minimum is 5 MiB
        self.config = config
        self.bucket = config.bucket
        self.endpoint = config.endpoint.rstrip("/")
        # Our own pool: sized for our parallel transfers, bounded connect retries so that an unreachable
        # endpoint fails in seconds (the outer loop below retries transfers that fail part-way).
        http = urllib3.PoolManager(
            maxsize=max(10, jobs * (PARALLEL_PARTS + 1)),
            timeout=urllib3.Timeout(connect=10, read=300),
            retries=urllib3.Retry(total=3, connect=1, read=1, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
        )
        self._conditions_checked = False
        self._conditions_lock = threading.Lock()
        self.client = _Minio(parts.netloc, access_key=config.access_key or None,
                            secret_key=config.secret_key or None, secure=parts.scheme == "https",
                            region=config.region, http_client=http)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    # -- error mapping and retries ----------------------------------------------------------------------

    def _map(self, exc: BaseException, what: str) -> AidiError | None:
        """The user-facing error for ``exc``, or None when it is transient (worth a retry)."""
        where = f"the dataspace at {self.endpoint}"
        if isinstance(exc, S3Error):
            if exc.code == "AccessDenied":
                return AuthError(self.config.access_denied(self.uri(exc.object_name or ""), what))
            if exc.code in _AUTH_CODES:
                return AuthError(f"{where} refused the credentials of access key {self.config.access_key!r} "
                                 f"({exc.code}) while trying to {what}; run `hitc init -t ACCESS_KEY:SECRET_KEY` "
                                 "with a valid token")
            if exc.code == "NoSuchBucket":
                return self._bucket_missing()
            if exc.code in ("XAmzContentSHA256Mismatch", "BadDigest"):
                return IntegrityError(f"{where} refused {exc.object_name or 'an object'}: its content does not match "
                                      "the sha256 computed before the upload (did the file change meanwhile?); "
                                      "upload again")
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return NotFoundError(f"{self.uri(exc.object_name or '')} does not exist")
            if exc.code == "PreconditionFailed":  # only create-only writes send a condition
                return ObjectExists(exc.object_name or "", self.uri(exc.object_name or ""))
            if exc.code in _TRANSIENT_CODES:
                return None
            return AidiError(f"{where} answered {exc.code} ({exc.message}) while trying to {what}")
        if isinstance(exc, ServerError | InvalidResponseError):
            status = getattr(exc, "status_code", 0) or getattr(exc, "_code", 0)
            if status in (401, 403):
                return AuthError(f"{where} refused the credentials of access key {self.config.access_key!r} "
                                 f"(HTTP {status}); run `hitc init -t ACCESS_KEY:SECRET_KEY` with a valid token")
            return None
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(
                exc.reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError):
            return ConnectionFailed(f"cannot reach {where} ({_reason(exc.reason)}); check that the server is up "
                                    f"and the endpoint (from {self.config.source}; `hitc init --endpoint URL` sets "
                                    "it)")
        return None  # resets, timeouts, protocol errors: worth another attempt

    def _no_conditional_writes(self, why: str) -> AidiError:
        return AidiError(f"the dataspace at {self.endpoint} does not support conditional writes "
                         f"(If-None-Match: *): {why}. Without them two uploads could take the same version; "
                         "upgrade the S3 server (MinIO, AWS S3 and SeaweedFS 4.48 support them)")

    def _check_conditional_writes(self) -> None:
        """Once per store: a second create-only write of one scratch key must be refused."""
        with self._conditions_lock:
            if self._conditions_checked:
                return
            key = CONDITION_PROBE + secrets.token_hex(8)
            headers: dict[str, HeaderValue] = {"If-None-Match": "*"}
            what = "write a scratch object (to check conditional writes)"
            try:
                try:
                    self._call(what, lambda: self.client._put_object(self.bucket, key, b"1", headers=dict(headers)))
                except ObjectExists:
                    raise
                except AidiError as exc:
                    if "NotImplemented" in str(exc):
                        raise self._no_conditional_writes("it answered NotImplemented") from None
                    raise
                try:
                    self._call(what, lambda: self.client._put_object(self.bucket, key, b"2", headers=dict(headers)))
                except ObjectExists:
                    self._conditions_checked = True
                    return
                raise self._no_conditional_writes("it replaced an existing object a create-only write named")
            finally:
                self.delete(key)

    def _bucket_missing(self) -> NotFoundError:
        return NotFoundError(f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it with `hitc init "
                             f"... --create-bucket`, ask your platform admin, or fix the bucket (from "
                             f"{self.config.source})")

    def _call(self, what: str, fn: Callable[[], T], attempts: int = ATTEMPTS) -> T:
        """Run ``fn``, retrying transient failures with exponential backoff and jitter."""
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except (S3Error, ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, ConnectionError,
                    TimeoutError) as exc:
                mapped = self._map(exc, what)
                if mapped is not None:
                    raise mapped from None
                if attempt == attempts:
                    raise ConnectionFailed(f"the dataspace at {self.endpoint} kept failing while trying to {what} "
                                           f"({type(exc).__name__}: {_reason(exc)}) after {attempts} attempts; "
                                           "try again later") from None
                log.debug("retrying %s after %s: %s", what, type(exc).__name__, exc)
                time.sleep(delay * (1 + random.random() / 2))
                delay *= 2
        raise AssertionError("unreachable")

    # -- the interface ----------------------------------------------------------------------------------

    def check(self, create: bool = False) -> None:
        exists = self._call(f"check bucket {self.bucket!r}", lambda: self.client.bucket_exists(self.bucket),
                            attempts=2)
        if exists:
            # bucket_exists is a HEAD that some servers answer without checking the signature; listing does.
            self._call(f"list bucket {self.bucket!r}",
                       lambda: next(iter(self.client.list_objects(self.bucket, prefix="datasets/")), None),
                       attempts=2)
            return
        if not create:
            raise self._bucket_missing()
        self._call(f"create bucket {self.bucket!r}", lambda: self.client.make_bucket(self.bucket))

    def put_file(self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None,
                 progress: BytesCallback | None = None, create_only: bool = False) -> ObjectInfo:
        check_key(key)
        size = os.path.getsize(path)
        if ((metadata or {}).get("sha256") or create_only) and size <= self.part_size:
            data = Path(path).read_bytes()
            if len(data) != size:
                raise IntegrityError(f"{path} changed while it was being uploaded; upload again")
            info = self.put_bytes(key, data, metadata, create_only=create_only)
            if progress:
                progress(size)
            return info
        tracker = _Progress(progress)

        def put() -> None:
            tracker.restart()
            self.client.fput_object(self.bucket, key, os.fspath(path), metadata=dict(metadata or {}),
                                    part_size=self.part_size, num_parallel_uploads=PARALLEL_PARTS,
                                    progress=tracker if progress else None)
        self._put_multipart(key, put, create_only)
        return ObjectInfo(key=key, size=size, metadata=dict(metadata or {}))

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  create_only: bool = False) -> ObjectInfo:
        """With a ``sha256`` in ``metadata``, the PUT is signed with it instead of hashing ``data`` again."""
        check_key(key)
        metadata = dict(metadata or {})
        if create_only:
            self._check_conditional_writes()
        if len(data) > self.part_size:
            self._put_multipart(key, lambda: self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), metadata=dict(metadata), part_size=self.part_size,
                num_parallel_uploads=PARALLEL_PARTS), create_only)
            return ObjectInfo(key=key, size=len(data), metadata=metadata)
        headers: dict[str, HeaderValue] = {"Content-Type": "application/octet-stream",
                                           **{META_PREFIX + name: value for name, value in metadata.items()}}
        if metadata.get("sha256"):
            headers[_KNOWN_SHA256] = metadata["sha256"]
        if create_only:
            headers["If-None-Match"] = "*"
        self._call(f"upload {key}", lambda: self.client._put_object(self.bucket, key, data, headers=dict(headers)))
        return ObjectInfo(key=key, size=len(data), metadata=metadata)

    def _put_multipart(self, key: str, upload: Callable[[], object], create_only: bool) -> None:
        """Run a minio multipart ``upload`` (retried), its completion conditional when ``create_only``."""
        if create_only:
            self._check_conditional_writes()

        def put() -> None:
            _create_only.active = create_only
            try:
                upload()
            finally:
                _create_only.active = False
        self._call(f"upload {key}", put)

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        return self._call(f"download {key}", get)

    def get_file(self, key: str, path: str | os.PathLike[str], progress: BytesCallback | None = None,
                 sha256: str | None = None) -> ObjectInfo:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def get() -> ObjectInfo:
            fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.fchmod(fd, download_mode())
            done = 0
            try:
                digest = hashlib.sha256()
                response = self.client.get_object(self.bucket, key)
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in response.stream(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            done += len(chunk)
                            if progress:
                                progress(len(chunk))
                    info = _info_from_headers(key, response.headers)
                finally:
                    response.close()
                    response.release_conn()
                if sha256 and digest.hexdigest() != sha256:
                    raise IntegrityError(f"{self.uri(key)}: sha256 is {digest.hexdigest()}, the manifest says "
                                         f"{sha256}; the stored copy is corrupt: re-upload that version")
                os.replace(temp, dest)
                return info
            except BaseException:
                if progress and done:
                    progress(-done)  # a retry starts the file again
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        return self._call(f"download {key}", get)

    def stat(self, key: str) -> ObjectInfo | None:
        def head() -> ObjectInfo | None:
            try:
                result = self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                    return None
                raise
            return ObjectInfo(key=key, size=result.size or 0, metadata=_user_metadata(result.metadata),
                              modified=result.last_modified.timestamp() if result.last_modified else None)
        return self._call(f"stat {key}", head)

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        def collect() -> list[ObjectInfo]:
            found = []
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive):
                name = obj.object_name or ""
                if obj.is_dir:
                    found.append(ObjectInfo(key=name, is_dir=True))
                else:
                    found.append(ObjectInfo(key=name, size=obj.size or 0,
                                            modified=obj.last_modified.timestamp() if obj.last_modified else None))
            return found
        # Collected whole so that a retry does not repeat entries already yielded.
        yield from self._call(f"list {prefix or '/'}", collect)

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))

    def abort_uploads(self, prefix: str) -> int:
        def abort_all() -> int:
            aborted = 0
            key_marker = upload_marker = None
            while True:
                page = self.client._list_multipart_uploads(self.bucket, prefix=prefix, key_marker=key_marker,
                                                           upload_id_marker=upload_marker)
                for upload in page.uploads:
                    if upload.upload_id is None:
                        continue  # a listing entry without an id cannot be aborted (nor resumed)
                    self.client._abort_multipart_upload(self.bucket, upload.object_name, upload.upload_id)
                    aborted += 1
                if not page.is_truncated:
                    return aborted
                key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker
        return self._call(f"abort unfinished uploads under {prefix}", abort_all)

    def close(self) -> None:
        self.client._http.clear()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 messages embed the object repr; keep the end, which says what happened.
    return text.rsplit(": ", 1)[-1].strip(" )'\"") if ": " in text else text


def _user_metadata(headers: Mapping[str, str] | None) -> dict[str, str]:
    found = {}
    for name, value in (headers or {}).items():
        lower = name.lower()
        if lower.startswith(META_PREFIX):
            found[lower[len(META_PREFIX):]] = value
    return found


def _info_from_headers(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    return ObjectInfo(key=key, size=int(headers.get("content-length") or 0), metadata=_user_metadata(headers))


class _Progress:
    """minio's progress protocol (``set_meta`` / ``update``) forwarded to a byte callback; a retried upload
    takes back what its failed attempt reported."""

    def __init__(self, callback: BytesCallback | None) -> None:
        self.callback = callback
        self.reported = 0

    def restart(self) -> None:
        if self.callback and self.reported:
            self.callback(-self.reported)
        self.reported = 0

    def set_meta(self, object_name: str, total_length: int) -> None:
        pass

    def update(self, size: int) -> None:
        if self.callback:
            self.reported += size
            self.callback(size)
