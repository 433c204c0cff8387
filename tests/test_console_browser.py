"""The console in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium) against the console on loopback, with the kmock Kubernetes API (tokens checked), the real
operator in-process, and the SeaweedFS dataspace behind it.

One walk through the pages a user takes: log in, find the uploaded dataset, watch a job submitted with
`traincli` appear in the Running tab and move to Finished when its pod succeeds (the page refreshes
itself), create an APP KEY that `traincli` then uses, revoke it, switch to Chinese. A screenshot of each
page is saved: to $AIDI_SCREENSHOTS if set (docs/screenshots/ holds a reviewed set), else to a temp
folder whose path the test prints (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aidi.cli import traincli
from aidi.console import ConsoleSettings
from aidi.dataspace import DataspaceConfig, open_dataspace
from tests.support.console import TokenCheck, cluster_settings, serving
from tests.support.operator import Cluster, kmock_api, operator_settings, running_operator
from tests.test_console import NS, put_team_secret, write_rec
from tests.test_podsteps import use_s3_dataspace
from tests.test_traincli import write_job

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed; `make tools` installs them with apt when "
           "run as root (apt-get install -y chromium chromium-driver)")

JOB = "adasmini-4pe"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1360,900", "--lang=en-US"]


class Browser:
    """Selenium's blocking calls, run in threads: the console, kmock and the operator share this loop."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base, shots

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def _on_fresh(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, which finds elements and uses them, again when the page re-rendered one in between:
        the live parts refresh themselves, so an element found a moment ago may already be replaced."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(20):
            try:
                return await self._run(fn)
            except StaleElementReferenceException:
                await asyncio.sleep(0.1)
        return await self._run(fn)

    async def open(self, path: str) -> None:
        await self._run(self.driver.get, self.base + path)

    async def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return await self._on_fresh(
            lambda: " ".join(e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css)))

    async def wait_text(self, css: str, *wanted: str, absent: tuple[str, ...] = (), timeout: float = 15) -> str:
        """Wait until ``css`` shows every ``wanted`` string and none of ``absent`` (the page refreshes itself)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = await self.text(css)
            if all(w in seen for w in wanted) and not any(a in seen for a in absent):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"{css} never showed {wanted} without {absent}; it shows: {seen[:500]!r}")
            await asyncio.sleep(0.2)

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        await self._on_fresh(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def type(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By

        await self._on_fresh(lambda: self.driver.find_element(By.CSS_SELECTOR, css).send_keys(value))

    async def shot(self, name: str) -> None:
        assert await self._run(self.driver.save_screenshot, str(self.shots / f"{name}.png"))

    @property
    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.base)


@pytest.fixture()
async def chromium(tmp_path: Path) -> AsyncIterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = await asyncio.to_thread(webdriver.Chrome, service=Service(executable_path=CHROMEDRIVER),
                                     options=options)
    try:
        yield driver
    finally:
        await asyncio.to_thread(driver.quit)


@pytest.fixture()
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("AIDI_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def test_a_user_walks_through_the_console(kube_api, s3_server, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path, chromium: Any, screenshots: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    dataspace = use_s3_dataspace(s3_server, monkeypatch)   # traincli submit uploads the code package here
    check = TokenCheck(kube_api)
    url = str(kube_api.url)
    api = kmock_api(url)
    await put_team_secret(api, NS, dataspace)
    await asyncio.to_thread(open_dataspace(dataspace).upload_dataset, "adasmini_4pe", "trainset",
                            write_rec(tmp_path / "rec", 5))
    team_token = check.team_token(NS)
    team_config = tmp_path / "team-gpucluster.yaml"
    assert traincli.main(["init", "-t", f"{NS}:{team_token}", "--server", url, "-c", str(team_config)]) == 0
    settings = cluster_settings(kube_api, check, tmp_path, DataspaceConfig(endpoint=dataspace.endpoint,
                                                                          bucket=dataspace.bucket))
    async with running_operator(operator_settings(url)), serving(settings) as console:
        b = Browser(chromium, console, screenshots)
        cluster = Cluster(api, NS)

        # Log in: the login page first, then the page that was asked for.
        await b.open("/jobs")
        await b.wait_text("h1", "Log in first")
        await b.click("#to-login")
        await b.type("#token", f"{NS}:{team_token}")
        await b.shot("01-login")
        await b.click("#login")
        await b.wait_text("#who-team", NS)
        assert b.path.startswith("/jobs")

        # Data management / Training datasets: the upload, its version, then its files and records.
        await b.click("#nav-datasets")
        await b.wait_text("#datasets", "adasmini_4pe", "trainset", "v1", "5")
        await b.shot("02-datasets")
        await b.click("#datasets a")
        await b.wait_text("#files", "train.rec", "train.idx")
        assert "v1" in await b.text("#versions")
        await b.shot("03-dataset-detail")

        # Task management / Training jobs: submitted with traincli, shown in Running, then Finished.
        job_file = write_job(tmp_path, JOB)
        assert await asyncio.to_thread(traincli.main, ["submit", "-f", str(job_file), "-c", str(team_config)]) == 0
        await b.open("/jobs?tab=running")
        await b.wait_text("#jobs", JOB)
        pods = await cluster.wait_pods(JOB, [f"{JOB}-worker-0"])
        await cluster.run_all(JOB)
        row = await b.wait_text("#jobs", JOB, "Running")
        assert "4" in row and "1/1" in row     # GPUs per worker, workers
        await b.shot("04-jobs-running")
        await b.click("#jobs a")
        await b.wait_text("#pods", f"{JOB}-worker-0", "Running")
        assert "adasmini_4pe/trainset" in await b.text("#summary")
        await b.shot("05-job-detail")
        await b.open("/jobs?tab=running")
        await b.wait_text("#jobs", JOB)
        for name in pods:
            await cluster.finish_pod(name)
        await b.wait_text("#live", "No jobs in this tab", absent=(JOB,))      # it left the Running tab by itself
        await b.click("#tab-finished")
        await b.wait_text("#jobs", JOB, "Succeeded")
        await b.shot("06-jobs-finished")

        # Personal centre: the dataspace token, and an APP KEY that traincli uses.
        await b.click("#nav-personal")
        await b.click("#reveal-dataspace-token")   # a POST: the key is in no page until asked for
        await b.wait_text("#dataspace-token", f"{dataspace.access_key}:{dataspace.secret_key}")
        await b.type("#queue", "gpu-a100")
        await b.type("#description", "browser test")
        await b.click("#create-appkey")
        snippet = await b.wait_text("#appkey-snippet", "appkey:", f"appid: {NS}/gpu-a100")
        await b.shot("07-personal-appkey")
        key_config = tmp_path / "appkey-gpucluster.yaml"
        key_config.write_text(snippet + "\n")
        capsys.readouterr()
        assert await asyncio.to_thread(traincli.main, ["list", "-c", str(key_config), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(j["name"], j["phase"]) for j in listed] == [(JOB, "Succeeded")]
        assert await b.text("#appkeys") and "gpu-a100" in await b.text("#appkeys")
        await b.click("#appkeys button.danger")
        await b.wait_text(".notice.info", "revoked")
        assert await asyncio.to_thread(traincli.main, ["list", "-c", str(key_config)]) == 4

        # 中文
        await b.open("/jobs?tab=finished&lang=zh")
        await b.wait_text("header", "数据管理", "训练数据集", "任务管理", "训练任务", "个人中心")
        await b.wait_text(".tabs", "运行中", "已完成", "失败")
        assert "已完成" in await b.text("#jobs")     # the phase, in words
        await b.shot("08-jobs-zh")

    # `aidi console`'s printed link logs in by itself (the token rides in the #fragment, never sent).
    local = ConsoleSettings.local(None, DataspaceConfig.local(tmp_path / "local-dataspace"), "no cluster here")
    async with serving(local) as console:
        b = Browser(chromium, console, screenshots)
        await b.open(f"/login#token={local.login_token}")
        await b.wait_text("#who-team", "-")
        await b.wait_text("#live", "no cluster here")
        assert "token" not in b.path
    await api.close()
    shots = sorted(p.name for p in screenshots.glob("*.png"))
    assert len(shots) >= 8
    print(f"\nconsole screenshots: {screenshots}")
