"""APP KEYs: revocable cluster credentials for `traincli`, one ServiceAccount each, in the team's namespace.

Issuing a key for team namespace NS:

1. a ServiceAccount ``appkey-<id>`` in NS, labelled ``aidi.io/appkey`` (and annotated with who made it,
   for which queue, and when it expires);
2. a RoleBinding ``appkey-<id>`` giving it the team's Role (``aidi-team``): exactly the rights the team's
   own token has, never more;
3. a TokenRequest for that ServiceAccount (``serviceaccounts/token``), valid ``ttl`` seconds. The token
   is returned once and stored nowhere: not in the cluster, not in the console.

Revoking deletes the RoleBinding and the ServiceAccount; the API server rejects a bound token as soon as
its ServiceAccount is gone. These calls are made with the *issuer's* credential (the console's own
ServiceAccount in a cluster, whose RBAC allows only this: docs/console.md), never with the user's.
"""

from __future__ import annotations

import datetime
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from aidi.cluster.kube import api_errors
from aidi.errors import NotFoundError, UsageError

LABEL = "aidi.io/appkey"
PREFIX = "appkey-"
ANNOTATION_CREATOR = "aidi.io/created-by"
ANNOTATION_QUEUE = "aidi.io/queue"
ANNOTATION_EXPIRES = "aidi.io/expires"
ANNOTATION_DESCRIPTION = "aidi.io/description"
_QUEUE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MANAGED_BY = {"app.kubernetes.io/managed-by": "aidi-console", LABEL: "true"}


@dataclass
class AppKey:
    id: str
    appid: str
    created_by: str
    created: str | None
    expires: str | None
    description: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IssuedKey:
    key: AppKey
    appkey: str  # the token: shown once

    @property
    def token(self) -> str:
        return f"{self.key.appid}:{self.appkey}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_queue(queue: str | None) -> str | None:
    queue = (queue or "").strip() or None
    if queue and not _QUEUE.match(queue):
        raise UsageError(f"queue {queue!r} is not a Kueue LocalQueue name (lower-case letters, digits, '-')")
    return queue


class AppKeyIssuer:
    """Issue, list and revoke APP KEYs in a namespace, with ``api`` (a kubernetes ApiClient) as the issuer."""

    def __init__(self, api: Any, team_role: str = "aidi-team", ttl_seconds: int = 365 * 86400) -> None:
        from kubernetes import client

        self.api = api
        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.team_role = team_role
        self.ttl_seconds = ttl_seconds

    def close(self) -> None:
        self.api.close()

    def issue(self, namespace: str, *, queue: str | None, created_by: str, description: str = "") -> IssuedKey:
        from kubernetes import client

        queue = _check_queue(queue)
        key_id = secrets.token_hex(4)
        name = PREFIX + key_id
        expires = _now() + datetime.timedelta(seconds=self.ttl_seconds)
        annotations = {ANNOTATION_CREATOR: created_by[:253], ANNOTATION_EXPIRES: _iso(expires),
                       ANNOTATION_DESCRIPTION: description.strip()[:200]}
        if queue:
            annotations[ANNOTATION_QUEUE] = queue
        meta = client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(MANAGED_BY), annotations=annotations)
        with api_errors(f"create ServiceAccount {namespace}/{name}"):
            self.core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
                metadata=meta, automount_service_account_token=False))
        try:
            binding = client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(MANAGED_BY)),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=self.team_role),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
            )
            with api_errors(f"create RoleBinding {namespace}/{name}"):
                self.rbac.create_namespaced_role_binding(namespace, binding)
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=self.ttl_seconds))
            with api_errors(f"request a token for ServiceAccount {namespace}/{name}"):
                answer = self.core.create_namespaced_service_account_token(name, namespace, request)
        except BaseException:
            self._delete(namespace, name)   # no half-made key stays behind
            raise
        status = answer.status
        if status is None or not status.token:
            self._delete(namespace, name)
            raise UsageError(f"the API server issued no token for ServiceAccount {namespace}/{name}")
        if status.expiration_timestamp:  # the server may shorten it (--service-account-max-token-expiration)
            annotations[ANNOTATION_EXPIRES] = _iso(status.expiration_timestamp)
            with api_errors(f"annotate ServiceAccount {namespace}/{name}"):
                self.core.patch_namespaced_service_account(name, namespace, {"metadata": {"annotations": {
                    ANNOTATION_EXPIRES: annotations[ANNOTATION_EXPIRES]}}})
        appid = f"{namespace}/{queue}" if queue else namespace
        key = AppKey(id=key_id, appid=appid, created_by=created_by, created=_iso(_now()),
                     expires=annotations[ANNOTATION_EXPIRES], description=annotations[ANNOTATION_DESCRIPTION])
        return IssuedKey(key=key, appkey=status.token)

    def list(self, namespace: str) -> list[AppKey]:
        with api_errors(f"list ServiceAccounts in {namespace}"):
            found = self.core.list_namespaced_service_account(namespace, label_selector=f"{LABEL}=true")
        keys = []
        for account in found.items:
            meta = account.metadata
            # Filter here too: the selector is a hint (test servers ignore it), and the namespace as well.
            if meta is None or meta.name is None or (meta.labels or {}).get(LABEL) != "true" \
                    or meta.namespace not in (None, namespace) or not meta.name.startswith(PREFIX):
                continue
            notes = meta.annotations or {}
            queue = notes.get(ANNOTATION_QUEUE)
            keys.append(AppKey(id=meta.name[len(PREFIX):], appid=f"{namespace}/{queue}" if queue else namespace,
                               created_by=notes.get(ANNOTATION_CREATOR, ""),
                               created=_iso(meta.creation_timestamp) if meta.creation_timestamp else None,
                               expires=notes.get(ANNOTATION_EXPIRES),
                               description=notes.get(ANNOTATION_DESCRIPTION, "")))
        return sorted(keys, key=lambda k: k.expires or "")

    def revoke(self, namespace: str, key_id: str) -> None:
        if not key_id or not all(c in "0123456789abcdef" for c in key_id):
            raise NotFoundError(f"no APP KEY {key_id!r}")
        name = PREFIX + key_id
        with api_errors(f"read ServiceAccount {namespace}/{name}", f"no APP KEY {key_id} in {namespace}"):
            account = self.core.read_namespaced_service_account(name, namespace)
        # RBAC cannot limit deletion to our accounts; this check does: only APP KEY accounts are deleted.
        if account.metadata is None or (account.metadata.labels or {}).get(LABEL) != "true":
            raise NotFoundError(f"no APP KEY {key_id} in {namespace}")
        self._delete(namespace, name)

    def _delete(self, namespace: str, name: str) -> None:
        for what, call in (("RoleBinding", self.rbac.delete_namespaced_role_binding),
                           ("ServiceAccount", self.core.delete_namespaced_service_account)):
            try:
                with api_errors(f"delete {what} {namespace}/{name}"):
                    call(name, namespace)
            except NotFoundError:
                pass


def gpucluster_snippet(issued: IssuedKey, server: str | None, ca_file: str | None, insecure: bool = False,
                       name: str = "mycluster1") -> str:
    """The ``~/.hobot/gpucluster.yaml`` to paste (docs/traincli.md)."""
    entry: dict[str, Any] = {"appid": issued.key.appid, "appkey": issued.appkey,
                             "server": server or "https://YOUR-API-SERVER:6443"}
    if ca_file:
        entry["certificate-authority"] = ca_file
    elif insecure:
        entry["insecure"] = True
    return yaml.safe_dump({"current-cluster": name, "clusters": {name: entry}}, sort_keys=False)
