"""The console over HTTP (no browser): login and 401s, team isolation, job details, APP KEYs and their
revocation, CSRF, languages, and `aidi console` itself. The Kubernetes API is kmock taught to check
tokens (tests/support/console.py); datasets live on the SeaweedFS test server.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from aidi.cli import traincli
from aidi.console import appkeys
from aidi.console.settings import ConsoleSettings
from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.dataspace.registry import ModelRegistry
from aidi.recordio import IndexedRecordWriter
from tests.support.console import TokenCheck, cluster_settings, serving
from tests.support.operator import Cluster, kmock_api
from tests.test_podsteps import use_s3_dataspace

NS, OTHER = "team-a", "team-b"


def write_rec(folder: Path, records: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with IndexedRecordWriter(folder / "train.rec", folder / "train.idx") as writer:
        for i in range(records):
            writer.write(i, b"record-%d" % i)
    return folder


async def put_team_secret(api: Any, namespace: str, config: DataspaceConfig) -> None:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in
            (("accessKey", config.access_key), ("secretKey", config.secret_key), ("bucket", config.bucket))}
    assert await api.create(f"/api/v1/namespaces/{namespace}/secrets",
                            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": "aidi-dataspace", "namespace": namespace}, "data": data})


def team_config(s3_server: Any, team: str) -> DataspaceConfig:
    """The team's own dataspace account on the test server: its bucket only (tests/support/seaweedfs.py)."""
    account = s3_server.teams[team]
    return DataspaceConfig(endpoint=s3_server.endpoint, bucket=account.bucket, access_key=account.access_key,
                           secret_key=account.secret_key)


RIG_PREFIXES = ("datasets/adasmini_4pe/", "datasets/hidden_b/", "models/adasmini_multitask/")


def clear_team_buckets(s3_server: Any) -> None:
    """The rig's objects in the two shared team buckets, gone before and after (tests leave no state)."""
    for team in (NS, OTHER):
        admin = dataclasses.replace(team_config(s3_server, team), access_key=s3_server.access_key,
                                    secret_key=s3_server.secret_key)
        store = open_dataspace(admin).store
        for prefix in RIG_PREFIXES:
            store.delete_prefix(prefix)


@pytest.fixture()
def dataspace(s3_server, monkeypatch: pytest.MonkeyPatch) -> DataspaceConfig:
    return use_s3_dataspace(s3_server, monkeypatch)


@pytest.fixture()
async def rig(kube_api, dataspace: DataspaceConfig, s3_server, tmp_path: Path):
    """Two teams with a job each; team-a's dataset and model in its own bucket, team-b's dataset in its own
    (each uploaded with the team's account, which the storage limits to its bucket); and the console."""
    check = TokenCheck(kube_api)
    api = kmock_api(str(kube_api.url))
    for namespace in (NS, OTHER):
        await put_team_secret(api, namespace, team_config(s3_server, namespace))
    await Cluster(api, NS).create_job("vehicle-a", priority=5, dataSpace={
        "inputs": [{"name": "adasmini_4pe", "type": "trainset", "version": "v1"}], "output": {"name": "models-a"}})
    await Cluster(api, OTHER).create_job("secret-b")
    await asyncio.to_thread(clear_team_buckets, s3_server)
    ds = open_dataspace(team_config(s3_server, NS))
    await asyncio.to_thread(ds.upload_dataset, "adasmini_4pe", "trainset", write_rec(tmp_path / "rec", 7))
    model = tmp_path / "model" / "int-inference-export-last-symbol.json"
    model.parent.mkdir()
    model.write_text("{}")
    registry = ModelRegistry(ds.store, uploader=ds.uploader)
    await asyncio.to_thread(lambda: registry.append("adasmini_multitask", [(model.name, model)],
                                                    source_job="vehicle-a", metrics={"mAP": 0.61}))
    # Team B's upload says it came from team-a's account: the console must not believe the manifest.
    other = open_dataspace(team_config(s3_server, OTHER), uploader=s3_server.teams[NS].access_key)
    await asyncio.to_thread(other.upload_dataset, "hidden_b", "trainset", write_rec(tmp_path / "rec-b", 3))
    settings = cluster_settings(kube_api, check, tmp_path, DataspaceConfig(endpoint=dataspace.endpoint,
                                                                          bucket=dataspace.bucket))
    async with serving(settings) as url:
        yield {"url": url, "check": check, "api": api, "team_a": f"{NS}:{check.team_token(NS)}",
               "team_b": f"{OTHER}:{check.team_token(OTHER)}", "kube_api": kube_api, "settings": settings,
               "s3": s3_server}
    await api.close()
    await asyncio.to_thread(clear_team_buckets, s3_server)


async def login(url: str, token: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post(f"{url}/login", data={"token": token, "next": "/jobs"}, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
    return session


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


# ------------------------------------------------------------------------------------------ login


PROTECTED = ["/", "/jobs", "/jobs?tab=finished", "/jobs/vehicle-a", "/datasets", "/datasets/adasmini_4pe/trainset",
             "/models", "/personal", "/personal/ca.crt", "/api/v1/jobs", "/api/v1/datasets", "/api/v1/appkeys",
             "/api/v1/whoami"]


async def test_unauthenticated_requests_get_401_and_nothing_else(rig) -> None:
    url = rig["url"]
    async with aiohttp.ClientSession() as anonymous:
        for path in PROTECTED:
            async with anonymous.get(url + path, allow_redirects=False) as r:
                body = re.sub(r'href="[^"]*"', "", await r.text())   # links echo the path it was asked for
                assert r.status == 401, path
                assert "vehicle-a" not in body and "adasmini" not in body, path
        async with anonymous.get(f"{url}/api/v1/jobs", headers={"Authorization": "Bearer team-a:forged"}) as r:
            assert r.status == 401 and "refused" in (await r.json())["error"]
        async with anonymous.post(f"{url}/personal/appkeys", data={"queue": ""}) as r:
            assert r.status == 401
        async with anonymous.post(f"{url}/login", data={"token": "team-a:forged"}) as r:
            assert r.status == 401 and "refused this token" in await r.text()
        async with anonymous.post(f"{url}/login", data={"token": "no-colon"}) as r:
            assert r.status == 401 and "APPID:APPKEY" in await r.text()
        async with anonymous.get(f"{url}/login") as r:
            assert r.status == 200 and 'name="token"' in await r.text()
        async with anonymous.get(f"{url}/healthz") as r:
            assert r.status == 200


async def test_a_team_sees_its_own_jobs_and_datasets_only(rig) -> None:
    url = rig["url"]
    session = await login(url, rig["team_a"])
    async with session:
        async with session.get(f"{url}/jobs") as r:
            page = await r.text()
            assert "vehicle-a" in page and "secret-b" not in page
        async with session.get(f"{url}/jobs/secret-b") as r:
            assert r.status == 404 and "secret-b" in await r.text()   # named in the error, nothing read
        async with session.get(f"{url}/datasets") as r:
            page = await r.text()
            assert "adasmini_4pe" in page and "hidden_b" not in page
        async with session.get(f"{url}/datasets/hidden_b/trainset") as r:
            assert r.status == 404
        async with session.get(f"{url}/models") as r:
            page = await r.text()
            # Versions side by side: a column per metric.
            assert "adasmini_multitask" in page and "<th>mAP</th>" in page and "<td>0.61</td>" in page
            # The version's number depends on the shared team bucket's history (see below).
            assert 'href="/jobs/vehicle-a"' in page and re.search(r'href="/models/adasmini_multitask/v\d+"', page)
        async with session.get(f"{url}/api/v1/datasets") as r:
            rows = await r.json()
        # One version (its number depends on the shared team bucket's history: SeaweedFS keeps empty folders).
        assert [(d["name"], len(d["versions"]), d["versions"][0]["records"]) for d in rows] == [("adasmini_4pe", 1, 7)]
    # The other team, by bearer token, sees its own job and dataset, and not team-a's.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {rig['team_b']}"}) as b:
        async with b.get(f"{url}/api/v1/jobs") as r:
            assert [j["name"] for j in await r.json()] == ["secret-b"]
        async with b.get(f"{url}/api/v1/datasets") as r:
            assert [d["name"] for d in await r.json()] == ["hidden_b"]
        async with b.get(f"{url}/api/v1/models") as r:
            assert await r.json() == []
        async with b.get(f"{url}/api/v1/jobs/vehicle-a") as r:
            assert r.status == 404


async def test_job_detail_explains_state_pods_events_and_log(rig) -> None:
    url, api, kube_api = rig["url"], rig["api"], rig["kube_api"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "vehicle-a-worker-0", "namespace": NS, "labels": {"aidi.io/job": "vehicle-a"}},
        "spec": {"containers": [{"name": "trainer", "image": "aidi/jobimage"}]}}
    assert await api.create(f"/api/v1/namespaces/{NS}/pods", pod)
    await api.patch(f"/api/v1/namespaces/{NS}/pods/vehicle-a-worker-0/status", {"status": {
        "phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": "0/3 nodes have enough nvidia.com/gpu"}]}})
    await api.patch(f"/apis/aidi.io/v1alpha1/namespaces/{NS}/trainjobs/vehicle-a/status", {"status": {
        "phase": "Pending", "reason": "Unschedulable", "message": "0/1 workers scheduled",
        "conditions": [{"type": "Created", "status": "True", "reason": "PodsCreated", "message": "1 pod created"}]}})
    assert await api.create(f"/api/v1/namespaces/{NS}/events", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": NS}, "type": "Warning",
        "reason": "FailedScheduling", "message": "0/3 nodes are available",
        "involvedObject": {"kind": "Pod", "name": "vehicle-a-worker-0", "namespace": NS}})
    log_url = f"/api/v1/namespaces/{NS}/pods/vehicle-a-worker-0/log"
    kube_api[f"get {log_url}"] << {"Content-Type": "text/plain"} << b"step 10/100 loss 0.52\n"
    session = await login(url, rig["team_a"])
    async with session:
        async with session.get(f"{url}/jobs/vehicle-a") as r:
            page = await r.text()
        for expected in ("Unschedulable", "no node can take this pod now", "PodsCreated", "FailedScheduling",
                         "step 10/100 loss 0.52", 'href="/datasets/adasmini_4pe/trainset?version=v1"',
                         "models-a", 'id="live"'):
            assert expected in page, expected
        async with session.get(f"{url}/jobs/vehicle-a", headers={"X-Console-Fragment": "live"}) as r:
            fragment = await r.text()
        assert "Unschedulable" in fragment and "<html" not in fragment
        async with session.get(f"{url}/jobs?tab=running") as r:
            assert 'id="tab-running"' in (page := await r.text()) and "vehicle-a" in page
        async with session.get(f"{url}/jobs?tab=finished") as r:
            assert "vehicle-a" not in await r.text()


async def test_appkeys_are_issued_listed_and_revoked_with_least_privilege(rig, tmp_path: Path) -> None:
    url, check = rig["url"], rig["check"]
    session = await login(url, rig["team_a"])
    async with session:
        async with session.get(f"{url}/personal") as r:
            page = await r.text()
        # The team's dataspace account (read by the console, not with the user's key): the access key and
        # bucket are on the page, the secret key is not — until a POST with the form's CSRF token asks.
        account = rig["s3"].teams[NS]
        assert f"{rig['settings'].dataspace.endpoint}" in page and "hitc init -t -" in page
        assert account.access_key in page and f"--bucket {account.bucket}" in page
        assert account.secret_key not in page and 'id="dataspace-token"' not in page
        async with session.post(f"{url}/personal/dataspace-token") as r:
            assert r.status == 403 and account.secret_key not in await r.text()
        async with session.get(f"{url}/personal/dataspace-token") as r:
            assert r.status == 405
        async with session.post(f"{url}/personal/dataspace-token", data={"csrf": csrf_of(page)}) as r:
            revealed = await r.text()
        assert f'id="dataspace-token">{account.token}</code>' in revealed
        async with session.post(f"{url}/personal/appkeys", data={"queue": "gpu-a100", "description": "ci"}) as r:
            assert r.status == 403        # no CSRF token: refused
        async with session.post(f"{url}/personal/appkeys",
                                data={"queue": "Bad_Queue", "csrf": csrf_of(page)}) as r:
            assert r.status == 400 and "not a Kueue LocalQueue name" in await r.text()
        async with session.post(f"{url}/api/v1/appkeys", json={"queue": "gpu-a100", "description": "ci"},
                                headers={"X-CSRF-Token": csrf_of(page)}) as r:
            assert r.status == 201
            issued = await r.json()
        assert issued["appid"] == f"{NS}/gpu-a100"
        config = yaml.safe_load(issued["gpucluster_yaml"])
        entry = config["clusters"][config["current-cluster"]]
        assert entry == {"appid": f"{NS}/gpu-a100", "appkey": issued["appkey"], "server": str(rig["kube_api"].url)
                         .rstrip("/")}
        # What was made: a labelled ServiceAccount bound to the team Role, nothing else.
        kube = rig["kube_api"]
        account = kube.objects["v1/serviceaccounts", NS, f"appkey-{issued['id']}"]
        assert account["metadata"]["labels"][appkeys.LABEL] == "true"
        assert account["metadata"]["annotations"][appkeys.ANNOTATION_CREATOR] == f"{NS}/traincli"
        binding = kube.objects["rbac.authorization.k8s.io/v1/rolebindings", NS, f"appkey-{issued['id']}"]
        assert binding["roleRef"]["name"] == "aidi-team"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"appkey-{issued['id']}", "namespace": NS}]
        # The key works for traincli ...
        path = tmp_path / "gpucluster.yaml"
        path.write_text(issued["gpucluster_yaml"])
        assert await asyncio.to_thread(traincli.main, ["list", "-c", str(path), "--json"]) == 0
        assert issued["appkey"] in check.seen
        # ... is listed, and after revocation it is refused at once.
        async with session.get(f"{url}/api/v1/appkeys") as r:
            assert [k["id"] for k in await r.json()] == [issued["id"]]
        async with session.post(f"{url}/personal/appkeys/{issued['id']}/revoke", data={"csrf": csrf_of(page)},
                                allow_redirects=True) as r:
            assert r.status == 200 and "revoked" in await r.text()
        assert await asyncio.to_thread(traincli.main, ["list", "-c", str(path), "--json"]) == 4
        async with session.post(f"{url}/personal/appkeys/00000000/revoke", data={"csrf": csrf_of(page)}) as r:
            assert r.status == 404
    # The team's own token cannot make accounts itself (it lacks the rights): the console's issuer did.
    writes = _tokens_of(kube, "serviceaccounts") + _tokens_of(kube, "rolebindings")
    assert len(writes) >= 4 and set(writes) == {check.issuer}   # create, token, patch, delete ...


def _tokens_of(kube_api: Any, plural: str) -> list[str]:
    tokens = []
    for request in list(kube_api):
        if request.resource is not None and request.resource.plural == plural and request.method.value != "GET":
            tokens.append(request.headers.get("Authorization", "").removeprefix("Bearer "))
    return tokens


async def test_language_follows_the_choice_and_sticks(rig) -> None:
    session = await login(rig["url"], rig["team_a"])
    async with session:
        async with session.get(f"{rig['url']}/jobs?lang=zh") as r:
            assert "训练任务" in (page := await r.text()) and "运行中" in page and 'lang="zh-CN"' in page
        async with session.get(f"{rig['url']}/datasets") as r:
            assert "训练数据集" in await r.text()
        async with session.get(f"{rig['url']}/datasets?lang=en") as r:
            assert "Training datasets" in await r.text()
        async with session.get(f"{rig['url']}/jobs?tab=failed") as r:
            assert 'id="lang" href="/jobs?tab=failed&amp;lang=zh"' in await r.text()   # the tab stays


REDIRECTS = [("/datasets?lang=zh", "/datasets?lang=zh"), ("/jobs/a%20b", "/jobs/a%20b"), ("//evil.example/x", "/jobs"),
             ("/\\evil.example", "/jobs"), ("https://evil.example", "/jobs"), ("/\t/evil.example", "/jobs"),
             ("/\n/evil.example", "/jobs"), ("/%09/evil.example", "/jobs"), ("/%2F/evil.example", "/jobs"),
             ("/%5Cevil.example", "/jobs"), ("/%252F/evil.example", "/jobs"), ("evil.example", "/jobs"), ("", "/jobs")]


async def test_login_redirects_only_within_the_console(rig) -> None:
    async with aiohttp.ClientSession() as client:
        for target, expected in REDIRECTS:
            async with client.post(f"{rig['url']}/login", data={"token": rig["team_a"], "next": target},
                                   allow_redirects=False) as r:
                assert (r.status, r.headers["Location"]) == (303, expected), target
                cookie = r.cookies["aidi_console"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"


async def test_the_login_form_keeps_only_same_site_next_links(rig) -> None:
    async with aiohttp.ClientSession() as client:
        # The encoded query decodes to "/<TAB>/evil.example": the form must not carry it on to the POST.
        async with client.get(f"{rig['url']}/login?next=/%09/evil.example") as r:
            page = await r.text()
        assert 'name="next" value="/jobs"' in page   # (the language link keeps the query, encoded: harmless)
        async with client.get(f"{rig['url']}/login?next=/datasets") as r:
            assert 'name="next" value="/datasets"' in await r.text()


async def test_login_from_another_site_is_refused(rig) -> None:
    url = rig["url"]
    host = url.split("://", 1)[1]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Referer": "https://evil.example/form.html"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site", "Origin": "https://other.example"},
                        {"Sec-Fetch-Site": "cross-site", "Origin": url}, {"Origin": f"http://{host}.evil.example"}):
            async with client.post(f"{url}/login", data={"token": rig["team_a"], "next": "/jobs"}, headers=headers,
                                   allow_redirects=False) as r:
                assert r.status == 403, headers
                assert "another site" in await r.text() and "aidi_console" not in r.cookies
        assert not client.cookie_jar.filter_cookies(url).get("aidi_console")
        # What browsers send for the console's own form (Chromium: Origin null under no-referrer), and scripts.
        for headers in ({"Origin": url}, {"Referer": f"{url}/login?next=/jobs"}, {"Sec-Fetch-Site": "same-origin"},
                        {"Sec-Fetch-Site": "same-origin", "Origin": "null"}, {}):
            async with client.post(f"{url}/login", data={"token": rig["team_a"], "next": "/jobs"}, headers=headers,
                                   allow_redirects=False) as r:
                assert r.status == 303, headers


async def test_logout_ends_the_session(rig) -> None:
    session = await login(rig["url"], rig["team_a"])
    async with session:
        async with session.get(f"{rig['url']}/jobs") as r:
            page = await r.text()
        async with session.post(f"{rig['url']}/logout", data={"csrf": csrf_of(page)}) as r:
            assert r.status == 200   # followed to the login page
        async with session.get(f"{rig['url']}/jobs", allow_redirects=False) as r:
            assert r.status == 401


# ------------------------------------------------------------------------------------- aidi console


async def test_aidi_console_serves_the_local_defaults(kube_api, tmp_path: Path) -> None:
    """`aidi console` as a user runs it: the local-folder dataspace and the gpucluster.yaml cluster."""
    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIDI_")}, "HOME": str(home)}
    ds = open_dataspace(DataspaceConfig.local(home / ".olympus" / "dataspace"))
    await asyncio.to_thread(ds.upload_dataset, "vehicle_rec", "trainset", write_rec(tmp_path / "rec", 4))
    config = home / ".hobot" / "gpucluster.yaml"
    assert traincli.main(["init", "-t", f"{NS}:local-token", "--server", str(kube_api.url), "-c", str(config)]) == 0
    await Cluster(kmock_api(str(kube_api.url)), NS).create_job("local-job")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aidi.cli.aidi_main", "console", "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        second = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
        url = re.search(r"on (http://\S+)", first).group(1)
        token = re.search(r"#token=(\S+)", second).group(1)
        session = await login(url, token)
        async with session:
            async with session.get(f"{url}/api/v1/whoami") as r:
                assert (await r.json())["namespace"] == NS
            async with session.get(f"{url}/datasets") as r:
                assert "vehicle_rec" in await r.text()
            async with session.get(f"{url}/api/v1/jobs") as r:
                assert [j["name"] for j in await r.json()] == ["local-job"]
        async with aiohttp.ClientSession() as anonymous, anonymous.post(f"{url}/login", data={"token": "x"}) as r:
            assert r.status == 401
    finally:
        proc.terminate()
        await proc.wait()
        _, err = await proc.communicate()
    assert token not in err.decode()   # the access log shows paths only


def test_console_settings_from_a_real_argument_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aidi.cli import aidi_main, console_cmd

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("AIDI_DATASPACE_ENDPOINT", raising=False)
    monkeypatch.delenv("AIDI_GPUCLUSTER_CONFIG", raising=False)
    parser = aidi_main.build_parser()
    local = console_cmd.settings_from_args(parser.parse_args(["console", "--refresh", "2"]))
    assert local.mode == "local" and local.local_cluster is None and "no cluster" in local.local_cluster_problem
    assert local.dataspace.is_local and local.refresh_seconds == 2 and len(local.login_token) >= 24
    args = parser.parse_args(["console", "--mode", "cluster", "--kube-server", "https://k8s:6443",
                              "--dataspace-endpoint", "http://minio:9000", "--public-server", "https://k8s.example.com:6443",
                              "--appkey-ttl", "86400", "--no-appkeys"])
    cluster = console_cmd.settings_from_args(args)
    assert (cluster.kube_server, cluster.public_server, cluster.appkey_ttl_seconds, cluster.appkeys_enabled) == \
        ("https://k8s:6443", "https://k8s.example.com:6443", 86400, False)
    assert cluster.dataspace.endpoint == "http://minio:9000" and cluster.login_token is None
    assert aidi_main.main(["console", "--mode", "cluster", "--kube-server", "https://k8s:6443"]) == 2


def test_the_help_names_the_pages_and_the_doc() -> None:
    result = subprocess.run([sys.executable, "-m", "aidi.cli.aidi_main", "console", "--help"], capture_output=True,
                            text=True, check=True)
    assert "Personal centre" in result.stdout and "docs/console.md" in result.stdout


def test_settings_refuse_a_cluster_console_without_a_server() -> None:
    from aidi.errors import UsageError

    with pytest.raises(UsageError, match="--kube-server"):
        ConsoleSettings(mode="cluster")


async def test_a_refused_issuer_fails_the_key_not_the_session(rig) -> None:
    url = rig["url"]
    Path(rig["settings"].issuer_token_file).write_text("no-longer-valid")   # re-read for every call
    session = await login(url, rig["team_a"])
    async with session:
        async with session.get(f"{url}/personal") as r:
            page = await r.text()
        assert "the console&#x27;s ServiceAccount may not manage APP KEYs" in page
        async with session.post(f"{url}/personal/appkeys", data={"csrf": csrf_of(page)}) as r:
            assert r.status == 502 and "may not manage APP KEYs" in await r.text()
        async with session.get(f"{url}/jobs", allow_redirects=False) as r:
            assert r.status == 200
    assert rig["check"].issued == {}   # no token was handed out


def test_the_local_runner_s_jobs_show_too(tmp_path: Path) -> None:
    """`aidi console` on a `type: local` cluster (the embedded runner) shows its jobs like a cluster's."""
    from aidi.cluster import gpucluster
    from aidi.console import views
    from aidi.console.identity import login
    from aidi.local.store import Namespace, write_json

    workdir = tmp_path / "local-cluster"
    path = tmp_path / "gpucluster.yaml"
    path.write_text(yaml.safe_dump({"current-cluster": "laptop", "clusters": {
        "laptop": {"appid": NS, "type": "local", "workdir": str(workdir)}}}))
    job = {"apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob", "metadata": {"name": "laptop-job", "namespace": NS},
           "spec": {"gpusPerWorker": 0, "workers": {"min": 1, "max": 1}, "priority": 2},
           "status": {"phase": "Succeeded", "reason": "AllWorkersSucceeded", "startTime": "2026-11-26T01:00:00Z",
                      "completionTime": "2026-11-26T01:02:03Z"}}
    write_json(Namespace(workdir, NS).job_file("laptop-job"), job)
    settings = ConsoleSettings.local(gpucluster.resolve(path), DataspaceConfig.local(tmp_path / "ds"))
    identity = login(settings, settings.login_token)
    assert identity.namespace == NS and identity.cluster_problem is None
    rows = views.list_jobs(identity)
    assert [(r.name, r.tab, r.duration, r.priority) for r in rows] == [("laptop-job", "finished", 123, 2)]
    detail = views.job_detail(identity, "laptop-job", 10)
    assert detail.report.phase == "Succeeded" and detail.events == []


def test_sessions_expire_when_idle_and_bearer_checks_are_brief(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidi.console import server
    from aidi.console.identity import Identity

    # Far from the real clock, whatever the machine's uptime: a session stamped with the real clock
    # instead of this one would look expired (or fresh) at once.
    clock = [time.monotonic() + 1e6]
    monkeypatch.setattr(server.time, "monotonic", lambda: clock[0])
    sessions = server.Sessions(idle_seconds=60)
    session = sessions.new(Identity(namespace=NS, queue=None, user="u", cluster=None))
    clock[0] += 59
    assert sessions.get(session.id) is session          # use renews it
    clock[0] += 59
    assert sessions.get(session.id) is session
    clock[0] += 61
    assert sessions.get(session.id) is None and sessions.get(session.id) is None
    cached = sessions.remember_bearer("team-a:tok", Identity(namespace=NS, queue=None, user="u", cluster=None))
    assert sessions.bearer("team-a:tok") is cached and sessions.bearer("team-a:other") is None
    clock[0] += server.BEARER_CACHE_SECONDS
    assert sessions.bearer("team-a:tok") is None         # asked the API server again after a while


def test_sessions_are_swept_on_a_timer_and_capped_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidi.console import server
    from aidi.console.identity import Identity

    closed: list[str] = []

    class Counted(Identity):
        def close(self) -> None:
            closed.append(self.user)

    clock = [time.monotonic() + 1e6]
    monkeypatch.setattr(server.time, "monotonic", lambda: clock[0])
    sessions = server.Sessions(idle_seconds=60, per_user=3)
    made = [sessions.new(Counted(namespace=NS, queue=None, user="alice", cluster=None)) for _ in range(40)]
    other = sessions.new(Counted(namespace=NS, queue=None, user="bob", cluster=None))
    # 40 logins of one user leave 3 sessions; the 37 ended ones released their clients.
    assert len(sessions) == 4 and closed.count("alice") == 37 and "bob" not in closed
    assert all(sessions.get(s.id) is s for s in made[-3:]) and sessions.get(made[0].id) is None
    clock[0] += 30
    assert sessions.get(other.id) is other               # bob is active, alice's sessions are not
    clock[0] += 31
    assert sessions.sweep() == 3 and len(sessions) == 1 and closed.count("alice") == 40
    assert sessions.get(other.id) is other
    sessions.remember_bearer("team-a:tok", Counted(namespace=NS, queue=None, user="script", cluster=None))
    clock[0] += server.BEARER_CACHE_SECONDS + 1
    assert sessions.sweep() == 0 and "script" not in closed   # stale, but maybe still serving a request
    clock[0] += server.BEARER_CACHE_SECONDS
    assert sessions.sweep() == 2 and "script" in closed and "bob" in closed   # bob idled out meanwhile
    assert server.sweep_interval(8 * 3600) == 60 and server.sweep_interval(2) == 1


async def test_the_console_sweeps_idle_sessions_by_itself(rig) -> None:
    from dataclasses import replace

    from aiohttp import web

    from aidi.console import create_app, server

    app = create_app(replace(rig["settings"], session_idle_seconds=1))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        session = await login(url, rig["team_a"])
        await session.close()
        sessions = app[server.SESSIONS]
        assert len(sessions) == 1
        # Nobody comes back with the cookie: the timer alone ends the session (and releases its client).
        for _ in range(50):
            if not len(sessions):
                break
            await asyncio.sleep(0.1)
        assert len(sessions) == 0
    finally:
        await runner.cleanup()


async def test_aidi_appkey_issues_lists_and_revokes_with_the_admins_kubeconfig(kube_api, tmp_path: Path) -> None:
    """`aidi appkey` (a platform engineer's first key for a team) through a real argument list, with a kubeconfig
    whose token may manage accounts only (tests/support/console.py); the key then works for its team."""
    check = TokenCheck(kube_api)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "admin",
        "clusters": [{"name": "c", "cluster": {"server": str(kube_api.url).rstrip("/")}}],
        "users": [{"name": "admin", "user": {"token": check.issuer}}],
        "contexts": [{"name": "admin", "context": {"cluster": "c", "user": "admin"}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")} | {
        "KUBECONFIG": str(kubeconfig)}

    def aidi(*argv: str) -> tuple[int, str, str]:
        done = subprocess.run([str(Path(sys.executable).parent / "aidi"), *argv], capture_output=True, text=True,
                              env=env, timeout=60)
        return done.returncode, done.stdout, done.stderr

    code, out, err = await asyncio.to_thread(aidi, "appkey", "issue", "-n", NS, "--description", "alice")
    assert code == 0 and out.count("\n") == 1 and out.startswith(f"{NS}:"), err
    token = out.strip().split(":", 1)[1]
    assert check.namespace_of(token) == NS and token not in err
    key_id = re.search(r"APP KEY ([0-9a-f]{8}) ", err).group(1)
    assert f"aidi appkey revoke -n {NS} {key_id}" in err
    code, out, _ = await asyncio.to_thread(aidi, "appkey", "list", "-n", NS)
    assert code == 0 and key_id in out and "alice" in out and token not in out
    code, out, _ = await asyncio.to_thread(aidi, "appkey", "revoke", "-n", NS, key_id)
    assert code == 0 and f"APP KEY {key_id} in {NS} revoked" in out
    assert check.namespace_of(token) is None   # its ServiceAccount is gone: the token no longer authenticates
    code, _, err = await asyncio.to_thread(aidi, "appkey", "revoke", "-n", NS, key_id)
    assert code == 3 and f"no APP KEY {key_id} in {NS}" in err
    code, _, err = await asyncio.to_thread(aidi, "appkey", "issue", "-n", NS, "--ttl", "60")
    assert code == 2 and "at least 600 seconds" in err
    env["KUBECONFIG"] = str(tmp_path / "missing")
    code, _, err = await asyncio.to_thread(aidi, "appkey", "list", "-n", NS)
    assert code == 2 and "aidi appkey acts with your own kubeconfig" in err
