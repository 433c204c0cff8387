"""The console's test rig: kmock taught to check bearer tokens, and the console served in the test's loop.

kmock accepts any request; the console's promises (401 for a refused token, one team never reading
another's namespace, a revoked APP KEY failing at once) need an API server that says no. ``TokenCheck``
adds that to kmock as reactions: known team tokens may act in their own namespace only, the console's
issuer token may only manage ServiceAccounts, RoleBindings and TokenRequests and read the Secret
``aidi-dataspace``, team tokens may only create Secrets (as the chart's Roles say), an issued APP KEY token
works while its ServiceAccount exists, and everything else is 401. Requests without any Authorization
header are the in-process operator's (it runs as a trusted component here, as in a cluster).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from aidi.console import ConsoleSettings, create_app

_TOKEN_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/serviceaccounts/([^/]+)/token$")
_ISSUER_RESOURCES = {"serviceaccounts", "rolebindings"}


def jwt_like(subject: str) -> str:
    """A token shaped like a ServiceAccount JWT (the console shows its subject)."""
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{part({'alg': 'none'})}.{part({'sub': subject})}.{secrets.token_hex(8)}"


class TokenCheck:
    def __init__(self, kube_api: Any) -> None:
        self.kube_api = kube_api
        self.teams: dict[str, str] = {}       # token -> namespace
        self.issued: dict[str, tuple[str, str]] = {}   # token -> (namespace, ServiceAccount)
        self.issuer = "console-sa-" + secrets.token_hex(8)
        self.seen: list[str] = []             # every bearer token a request carried, in order
        kube_api[self._unknown] << 401 << {"kind": "Status", "code": 401, "reason": "Unauthorized"}
        kube_api[self._forbidden] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden"}
        kube_api["post", re.compile(_TOKEN_PATH.pattern)] << 201 << self._token_request

    def team_token(self, namespace: str) -> str:
        token = jwt_like(f"system:serviceaccount:{namespace}:traincli")
        self.teams[token] = namespace
        return token

    def _bearer(self, request: Any) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        token = header.removeprefix("Bearer ").strip()
        self.seen.append(token)
        return token

    def _sa_alive(self, namespace: str, name: str) -> bool:
        return any(key[0].plural == "serviceaccounts" and key[1] == namespace and key[2] == name and not obj.deleted
                   for key, obj in self.kube_api.objects.items())

    def namespace_of(self, token: str) -> str | None:
        if token in self.teams:
            return self.teams[token]
        if token in self.issued:
            namespace, account = self.issued[token]
            return namespace if self._sa_alive(namespace, account) else None
        return None

    def _unknown(self, request: Any) -> bool:
        token = self._bearer(request)
        return token is not None and token != self.issuer and self.namespace_of(token) is None

    def _forbidden(self, request: Any) -> bool:
        header = request.headers.get("Authorization")
        if header is None:
            return False
        token = header.removeprefix("Bearer ").strip()
        plural = request.resource.plural if request.resource is not None else None
        if token == self.issuer:
            # The console's Roles: accounts and bindings (APP KEYs), and reading the one Secret aidi-dataspace.
            reads_team_secret = plural == "secrets" and request.name == "aidi-dataspace" and \
                str(request.method).upper().endswith("GET")
            return plural not in _ISSUER_RESOURCES and not reads_team_secret
        # A team's Role (aidi-team) covers its own namespace only, no accounts or bindings, and on Secrets
        # only create.
        if plural == "secrets" and not str(request.method).upper().endswith("POST"):
            return True
        return plural in _ISSUER_RESOURCES or (request.namespace is not None
                                               and request.namespace != self.namespace_of(token))

    def _token_request(self, request: Any) -> dict[str, Any]:
        match = _TOKEN_PATH.match(request.url.path)
        assert match, request.url.path
        namespace, account = match.groups()
        token = jwt_like(f"system:serviceaccount:{namespace}:{account}")
        self.issued[token] = (namespace, account)
        seconds = (request.data or {}).get("spec", {}).get("expirationSeconds") or 3600
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [], "expirationSeconds": seconds},
                "status": {"token": token, "expirationTimestamp": "2027-11-26T00:00:00Z"}}


def cluster_settings(kube_api: Any, check: TokenCheck, tmp_path: Any, dataspace: Any, **changes: Any
                     ) -> ConsoleSettings:
    issuer = tmp_path / "issuer-token"
    issuer.write_text(check.issuer)
    url = str(kube_api.url).rstrip("/")
    return ConsoleSettings(mode="cluster", kube_server=url, public_server=url, dataspace=dataspace,
                           issuer_token_file=str(issuer), **{"refresh_seconds": 0.5, **changes})


@contextlib.asynccontextmanager
async def serving(settings: ConsoleSettings) -> AsyncIterator[str]:
    """The console on a free loopback port in this event loop; yields its base URL."""
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
