"""`traincli submit`: validate, pack and encrypt UPLOAD_DIR, upload it, then create the Secret and the TrainJob.

The password goes from the job file (or ``--password-file``) into the Secret's data and into the
encryption key, nowhere else: not the CR, not a log line, not a child process's command line.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aidi.api import aidi_form
from aidi.api import trainjob as tj
from aidi.api.loader import JobFile
from aidi.cluster.client import JobClient
from aidi.cluster.gpucluster import ResolvedCluster
from aidi.errors import AuthError, UsageError
from aidi.jobs import codepkg

log = logging.getLogger(__name__)


@dataclass
class SubmitResult:
    name: str
    namespace: str
    cluster: str
    uid: str | None
    code_uri: str | None = None
    code_sha256: str | None = None
    package_bytes: int = 0
    package_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def package_key(namespace: str, job: str, sha256: str) -> str:
    """Where a code package lives in the dataspace (docs/architecture.md, "Dataspace layout")."""
    return f"codepkgs/{namespace}/{job}/{sha256}.tar.gz.enc"


def submit(job_file: JobFile, resolved: ResolvedCluster, client: JobClient, *, open_dataspace: Callable[[], Any],
           max_bytes: int = codepkg.DEFAULT_MAX_BYTES, password: str | None = None) -> SubmitResult:
    """Submit a validated job through ``client`` (:func:`aidi.cluster.client.connect` of ``resolved``): the same
    steps on Kubernetes and on the local cluster. ``open_dataspace`` is called only when there is code to upload.

    ``password`` is for a CR whose code folder is named by the ``aidi.io/upload-dir`` annotation; the AIDI form
    carries its own (JOB_PASSWD).
    """
    job = job_file.job.model_copy(deep=True)
    name, namespace = job.metadata.name, client.namespace
    job.metadata.namespace = namespace
    if resolved.cluster.queue and not job.spec.queue_name:
        job.spec.queue_name = resolved.cluster.queue

    upload_dir, secret = _code_source(job_file, job, password)
    if client.job_exists(name):
        raise UsageError(f"a TrainJob named {name!r} already exists in namespace {namespace}; delete it with "
                         f"`traincli delete {name}` or choose another JOB_NAME")
    result = SubmitResult(name=name, namespace=namespace, cluster=resolved.name, uid=None)
    secret_name = aidi_form.code_secret_name(name)
    if upload_dir is not None and secret is not None:
        _upload_code(job, upload_dir, secret, namespace, open_dataspace, max_bytes, result)
    elif job.spec.code_package and job.spec.code_package.password_secret_ref:
        _warn_if_missing(client, job.spec.code_package.password_secret_ref.name, namespace)
    # The job first, then its Secret, created already owned by it: a team's credential may create Secrets but
    # not change them, and the pods wait for the Secret to appear (seconds).
    created = client.create_job(job.to_wire())
    result.uid = (created.get("metadata") or {}).get("uid")
    if secret is not None:
        try:
            client.put_password_secret(secret_name, name, secret, owner=created if result.uid else None)
        except BaseException:
            client.delete_job(name)
            raise
        if not result.uid:
            log.warning("the API server returned no uid for TrainJob %s, so Secret %s cannot be owned by it; "
                        "`traincli delete %s` removes both", name, secret_name, name)
    return result


def _warn_if_missing(client: JobClient, ref: str, namespace: str) -> None:
    """A hint for a CR naming a password Secret made beforehand; a team's key may not read Secrets (then: no hint)."""
    try:
        exists = client.secret_exists(ref)
    except AuthError:
        return
    if not exists:
        log.warning("the code package's Secret %s does not exist in %s yet; the job waits for it "
                    "(kubectl -n %s create secret generic %s --from-file=password=FILE)",
                    ref, namespace, namespace, ref)


def _code_source(job_file: JobFile, job: tj.TrainJob, password: str | None) -> tuple[Path | None, str | None]:
    """(folder to pack, password), or (None, None) when the job brings no code folder."""
    if job_file.form == "aidi":
        assert job_file.password is not None and job_file.upload_dir is not None
        return job_file.upload_dir, job_file.password.get_secret_value()
    folder = job.metadata.annotations.get(aidi_form.UPLOAD_DIR_ANNOTATION)
    if folder is None:
        return None, None
    if job.spec.code_package is not None:
        raise UsageError(f"{job_file.source}: set either spec.codePackage (an uploaded package) or the "
                         f"{aidi_form.UPLOAD_DIR_ANNOTATION} annotation (a folder to upload), not both")
    if not password:
        raise UsageError(f"{job_file.source}: the {aidi_form.UPLOAD_DIR_ANNOTATION} annotation names a code folder "
                         "to encrypt; pass its password with --password-file FILE")
    path = Path(folder)
    return (path if path.is_absolute() else Path(job_file.source).parent / path), password


def _upload_code(job: tj.TrainJob, upload_dir: Path, password: str, namespace: str,
                 open_dataspace: Callable[[], Any], max_bytes: int, result: SubmitResult) -> None:
    with tempfile.TemporaryDirectory(prefix="aidi-submit-") as tmp:
        package = codepkg.build(upload_dir, password, tmp, max_bytes)
        log.info("packed %s: %d files, %s → %s encrypted (%d ignored)", upload_dir, package.pack.files,
                 codepkg.human_bytes(package.pack.source_bytes), codepkg.human_bytes(package.size),
                 package.pack.ignored)
        dataspace = open_dataspace()
        key = package_key(namespace, job.metadata.name, package.sha256)
        try:
            dataspace.store.put_file(key, package.path, metadata={"sha256": package.sha256})
            uri = dataspace.store.uri(key)
        finally:
            dataspace.close()
        log.info("uploaded the code package to %s", uri)
    job.spec.code_package = tj.CodePackage(
        uri=uri, sha256=package.sha256,
        password_secret_ref=tj.SecretKeyRef(name=aidi_form.code_secret_name(job.metadata.name), key="password"),
    )
    result.code_uri, result.code_sha256 = uri, package.sha256
    result.package_bytes, result.package_files = package.size, package.pack.files
