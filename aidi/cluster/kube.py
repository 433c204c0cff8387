"""The Kubernetes calls behind `traincli`: TrainJobs (CustomObjectsApi), their Secret, pods and logs.

One :class:`KubeJobClient` (the Kubernetes ``aidi.cluster.client.JobClient``) per command, built from the
resolved ``gpucluster.yaml`` entry: a bearer token
(appkey) against ``server``, or the kubeconfig (in-cluster or ``~/.kube/config``) when there is no appkey.
API failures become ``aidi.errors`` classes with a sentence saying what to do.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aidi.api import trainjob as tj
from aidi.cluster.gpucluster import ResolvedCluster
from aidi.errors import AidiError, AuthError, ConnectionFailed, NotFoundError, UsageError
from aidi.jobs import podspec

log = logging.getLogger(__name__)

JOB_LABEL = podspec.LABEL_JOB  # on the pods (set by the operator) and on the code Secret
CANCEL_ANNOTATION = "aidi.io/cancelled-at"
DEFAULT_NAMESPACE = "default"


class ConflictError(AidiError):
    """The object already exists."""

    exit_code = 1


@contextlib.contextmanager
def api_errors(what: str, not_found: str | None = None, echo_body: bool = True) -> Iterator[None]:
    """Turn the client's exceptions into our error classes; ``what`` names the call for the message.

    ``echo_body=False`` for calls that carry a secret: the server's answer may quote the request."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    try:
        yield
    except ApiException as exc:
        if exc.status in (401, 403):
            raise AuthError(f"{what}: the cluster refused our credential ({exc.status} {exc.reason}); check the "
                            "appkey in gpucluster.yaml (`traincli init -t APPID:APPKEY`) or your kubeconfig, "
                            "and that it may use this namespace") from None
        if exc.status == 404:
            raise NotFoundError(not_found or f"{what}: not found (404)") from None
        if exc.status == 409:
            raise ConflictError(f"{what}: already exists") from None
        body = (exc.body or "")[:300] if echo_body and isinstance(exc.body, str) else ""
        raise AidiError(f"{what}: the API server answered {exc.status} {exc.reason} {body}".rstrip()) from None
    except (Urllib3Error, OSError) as exc:
        cause = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the real one
        raise ConnectionFailed(f"{what}: cannot reach the cluster's API server ({cause}); "
                               "check `server` in gpucluster.yaml or your kubeconfig") from None


def _kubeconfig_client() -> tuple[Any, str | None]:
    from kubernetes import client, config

    configuration = client.Configuration()
    namespace = None
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
        ns_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
        if os.path.exists(ns_file):
            with open(ns_file, encoding="utf-8") as fh:
                namespace = fh.read().strip() or None
    else:
        try:
            config.load_kube_config(client_configuration=configuration)
            _, context = config.list_kube_config_contexts()
            namespace = (context or {}).get("context", {}).get("namespace")
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise UsageError(f"no appkey in gpucluster.yaml and no usable kubeconfig ({exc}); run `traincli init "
                             "-t APPID:APPKEY --server URL`, or set up ~/.kube/config") from None
    return client.ApiClient(configuration), namespace


def api_client(resolved: ResolvedCluster) -> tuple[Any, str]:
    """(ApiClient, namespace) for a cluster entry."""
    from kubernetes import client

    cluster = resolved.cluster
    if cluster.appkey is None:
        api, namespace = _kubeconfig_client()
        return api, cluster.namespace or namespace or DEFAULT_NAMESPACE
    if not cluster.server:
        raise UsageError(f"cluster {resolved.name!r} in {resolved.path} has an appkey but no server; add "
                         "`server: https://HOST:6443` (or run `traincli init ... --server URL`)")
    configuration = client.Configuration()
    configuration.host = cluster.server.rstrip("/")
    configuration.api_key = {"authorization": cluster.appkey.get_secret_value()}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    configuration.verify_ssl = not cluster.insecure
    if cluster.certificate_authority:
        if not Path(cluster.certificate_authority).expanduser().is_file():
            # Otherwise the TLS layer's "No such file or directory" reads as if the server were unreachable.
            raise UsageError(f"cluster {resolved.name!r} in {resolved.path}: certificate-authority "
                             f"{cluster.certificate_authority} is not a file; download the cluster's CA "
                             "(the console's /personal/ca.crt) and put its path there")
        configuration.ssl_ca_cert = str(Path(cluster.certificate_authority).expanduser())
    # No silent urllib3 retries (each logs a warning): callers that must outlast a blip retry themselves.
    configuration.retries = 0
    return client.ApiClient(configuration), cluster.namespace or DEFAULT_NAMESPACE


class KubeJobClient:
    """TrainJobs, their code Secret, and their pods in one namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.api = api
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    @classmethod
    def for_cluster(cls, resolved: ResolvedCluster, namespace: str | None = None) -> KubeJobClient:
        api, default_ns = api_client(resolved)
        return cls(api, namespace or default_ns)

    def close(self) -> None:
        self.api.close()

    def _job_missing(self, name: str) -> str:
        return (f"no TrainJob {name!r} in namespace {self.namespace}; `traincli list` shows the jobs there")

    # ----------------------------------------------------------------------------------- TrainJobs

    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        try:
            with api_errors(f"create TrainJob {self.namespace}/{name}"):
                created = self.custom.create_namespaced_custom_object(tj.GROUP, tj.VERSION, self.namespace,
                                                                      tj.PLURAL, body)
        except ConflictError:
            raise ConflictError(f"a TrainJob named {name!r} already exists in namespace {self.namespace}; delete it "
                                f"with `traincli delete {name}` or choose another JOB_NAME") from None
        # The client decodes only a 201 body; a server answering 200 leaves us None: read the object back.
        return created if isinstance(created, dict) else self.get_job(name)

    def get_job(self, name: str) -> dict[str, Any]:
        with api_errors(f"get TrainJob {name}", self._job_missing(name)):
            found = self.custom.get_namespaced_custom_object(tj.GROUP, tj.VERSION, self.namespace, tj.PLURAL, name)
        return _object(found, f"get TrainJob {name}")

    def job_exists(self, name: str) -> bool:
        try:
            self.get_job(name)
        except NotFoundError:
            return False
        return True

    def list_jobs(self) -> list[dict[str, Any]]:
        with api_errors(f"list TrainJobs in {self.namespace}"):
            found = _object(self.custom.list_namespaced_custom_object(tj.GROUP, tj.VERSION, self.namespace,
                                                                      tj.PLURAL), f"list TrainJobs in {self.namespace}")
        # Servers that scope by namespace still return it per item; keep only ours (kmock returns all).
        items = [i for i in found.get("items", []) if i.get("metadata", {}).get("namespace") in (None, self.namespace)]
        return sorted(items, key=lambda i: i["metadata"]["name"])

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        with api_errors(f"patch TrainJob {name}", self._job_missing(name)):
            found = self.custom.patch_namespaced_custom_object(tj.GROUP, tj.VERSION, self.namespace, tj.PLURAL, name,
                                                               patch)
        return _object(found, f"patch TrainJob {name}")

    def delete_job(self, name: str) -> None:
        from kubernetes import client

        with api_errors(f"delete TrainJob {name}", self._job_missing(name)):
            self.custom.delete_namespaced_custom_object(
                tj.GROUP, tj.VERSION, self.namespace, tj.PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )

    # ---------------------------------------------------------------------------------- the Secret

    def put_password_secret(self, secret_name: str, job_name: str, password: str,
                            owner: dict[str, Any] | None = None) -> None:
        """Create the Secret holding the code password, owned by ``owner`` (the created TrainJob) so that it goes
        with the job. Create only: a team's Role has no other right on Secrets (each of get, patch, delete would
        answer with a Secret's data; docs/security.md). Its value never leaves this call."""
        from kubernetes import client

        meta = client.V1ObjectMeta(name=secret_name, namespace=self.namespace, labels={JOB_LABEL: job_name})
        if owner is not None:
            meta.owner_references = [client.V1OwnerReference(
                api_version=tj.API_VERSION, kind=tj.KIND, name=owner["metadata"]["name"],
                uid=owner["metadata"]["uid"], controller=True)]
        body = client.V1Secret(metadata=meta, type="Opaque",
                               data={"password": base64.b64encode(password.encode("utf-8")).decode("ascii")})
        try:
            with api_errors(f"create Secret {self.namespace}/{secret_name}", echo_body=False):
                self.core.create_namespaced_secret(self.namespace, body)
        except ConflictError:
            raise ConflictError(f"a Secret named {secret_name!r} already exists in namespace {self.namespace} (left by "
                                f"an earlier job named {job_name!r}; the cluster removes it with that job within "
                                "seconds): submit again in a moment, or choose another JOB_NAME") from None

    def secret_exists(self, secret_name: str) -> bool:
        try:
            with api_errors(f"get Secret {secret_name}"):
                self.core.read_namespaced_secret(secret_name, self.namespace)
        except NotFoundError:
            return False
        return True

    def delete_secret(self, secret_name: str) -> bool:
        try:
            with api_errors(f"delete Secret {secret_name}"):
                self.core.delete_namespaced_secret(secret_name, self.namespace)
        except NotFoundError:
            return False
        return True

    # ---------------------------------------------------------------------------------------- pods

    def job_pods(self, name: str) -> list[dict[str, Any]]:
        """The job's pods (owned by it, or labelled with its name), sorted by name, as API dicts."""
        with api_errors(f"list pods of {name}"):
            found = self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_LABEL}={name}")
        pods = [self.api.sanitize_for_serialization(p) for p in found.items]
        # Filter here too: the selector is only a hint to the server (test servers ignore it).
        mine = [p for p in pods if _belongs_to(p, name, self.namespace)]
        return sorted(mine, key=lambda p: p["metadata"]["name"])

    def pod_log(self, pod: str, container: str | None, tail: int | None = None, previous: bool = False) -> str:
        with api_errors(f"read the log of pod {pod}", f"pod {pod} has no log (it is gone, or not started yet)"):
            return self.core.read_namespaced_pod_log(pod, self.namespace, container=container, tail_lines=tail,
                                                     previous=previous)

    def stream_log(self, pod: str, container: str | None, tail: int | None = None) -> Iterator[bytes]:
        """Follow a pod's log (``-f``): yields chunks until the container ends."""
        with api_errors(f"follow the log of pod {pod}", f"pod {pod} is gone"):
            # Without preloading the client returns the urllib3 response (its annotation says str).
            response: Any = self.core.read_namespaced_pod_log(pod, self.namespace, container=container, follow=True,
                                                              tail_lines=tail, _preload_content=False)
        try:
            yield from response.stream(4096)
        finally:
            response.release_conn()


def _object(answer: object, what: str) -> dict[str, Any]:
    """The JSON object the API server answered with (the client types custom objects as ``object``)."""
    if not isinstance(answer, dict):
        raise AidiError(f"{what}: the API server answered with {type(answer).__name__}, not an object")
    return answer


def _belongs_to(pod: dict[str, Any], job: str, namespace: str) -> bool:
    meta = pod.get("metadata", {})
    if meta.get("namespace") not in (None, namespace):
        return False
    if meta.get("labels", {}).get(JOB_LABEL) == job:
        return True
    return any(ref.get("kind") == tj.KIND and ref.get("name") == job for ref in meta.get("ownerReferences") or [])
