"""Progress, curves, reports and lineage in a real browser (headless Chromium, as tests/test_console_browser.py):
the kmock API server with the real operator in-process, the SeaweedFS dataspace.

The test plays the kubelet and the trainer: worker 0's log carries the trainer's progress records
(docs/progress.md) and moves on while the job page is open, so the page must follow by itself; then the job's
outputs (progress.jsonl, the job record) land in the dataspace as the sync step would put them, a model version
is saved from them with an `aidi eval` report, and the chain shows both ways. Screenshots 09-15 go where
tests/test_console_browser.py puts its own ($AIDI_SCREENSHOTS, docs/screenshots/ holds a reviewed set).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import kmock
import pytest

from aidi.console import ConsoleSettings  # noqa: F401  (the console package must import without a browser)
from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.dataspace.lineage import job_record
from aidi.dataspace.registry import ModelRegistry, load_append_spec
from aidi.jobs import progress as records
from tests.support.console import TokenCheck, cluster_settings, serving
from tests.support.operator import Cluster, kmock_api, operator_settings, running_operator
from tests.test_console import NS, put_team_secret, write_rec
from tests.test_console_browser import Browser
from tests.test_console_browser import chromium as chromium  # a fixture
from tests.test_console_browser import screenshots as screenshots  # a fixture
from tests.test_evaluate import hand_case
from tests.test_models import model_folder, write_append_yaml
from tests.test_podsteps import use_s3_dataspace
from tests.test_progress import a_run, as_log, train, val

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="needs Debian's chromium and chromium-driver (`make tools`)")

class ProgressBrowser(Browser):
    async def text(self, css: str) -> str:
        """As Browser.text, read again when the page's refresh replaced an element mid-read."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(5):
            try:
                return await super().text(css)
            except StaleElementReferenceException:
                await asyncio.sleep(0.1)
        return await super().text(css)

    async def count(self, css: str) -> int:
        from selenium.webdriver.common.by import By

        return int(await self._run(lambda: len(self.driver.find_elements(By.CSS_SELECTOR, css))))

    async def attribute(self, css: str, name: str) -> str:
        from selenium.webdriver.common.by import By

        return str(await self._run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).get_attribute(name)))

    async def scroll_to(self, css: str) -> None:
        """Screenshots show the window only: bring the part they are about into it."""
        await self._run(self.driver.execute_script, "document.querySelector(arguments[0]).scrollIntoView()", css)

    async def click_back(self) -> None:
        await self._run(self.driver.back)


JOB = "adasmini-4pe-curves"
MODEL = "adasmini_4pe_multitask"


def finished_run() -> list[dict[str, Any]]:
    run = a_run()
    run += [train(1, "fusion-bn-c1", i, offset=40, loss=0.8 - i / 200) for i in (30, 40)]
    run += [val(1, "fusion-bn-c1", 80, 0.55, 0.62),
            records.record("step", step=2, name="fusion-bn-c2", epochs=4, iterations=40, global_start=80,
                           resumed_epoch=0)]
    run += [train(2, "fusion-bn-c2", i, offset=80, loss=0.55 - i / 400) for i in (10, 20, 30, 40)]
    run += [val(2, "fusion-bn-c2", 120, 0.63, 0.66), records.record("done", seconds=812.0)]
    return run


async def test_progress_curves_reports_and_lineage(kube_api, s3_server, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path, chromium: Any, screenshots: Path) -> None:
    dataspace = use_s3_dataspace(s3_server, monkeypatch)
    ds = open_dataspace(dataspace)
    check = TokenCheck(kube_api)
    url = str(kube_api.url)
    api = kmock_api(url)
    await put_team_secret(api, NS, dataspace)
    await asyncio.to_thread(ds.upload_dataset, "adasmini_4pe", "trainset", write_rec(tmp_path / "rec", 5))
    team_token = check.team_token(NS)
    log = {"text": as_log(a_run()[:4])}   # step 0, iteration 20 of 40
    kube_api["get", kmock.subresource("log")] << {"Content-Type": "text/plain"} << (lambda: log["text"].encode())
    settings = cluster_settings(kube_api, check, tmp_path, DataspaceConfig(endpoint=dataspace.endpoint,
                                                                          bucket=dataspace.bucket))
    async with running_operator(operator_settings(url, progress_seconds=0.5)), serving(settings) as console:
        b = ProgressBrowser(chromium, console, screenshots)
        cluster = Cluster(api, NS)
        await b.open("/login")
        await b.type("#token", f"{NS}:{team_token}")
        await b.click("#login")
        await b.wait_text("#who-team", NS)

        job = await cluster.create_job(JOB, gpusPerWorker=4, nodeSelector=cluster.node_selector, dataSpace={
            "inputs": [{"name": "adasmini_4pe", "type": "trainset", "version": "latest"}],
            "output": {"name": "adasmini_4pe_models"}})
        await cluster.wait_pods(JOB, [f"{JOB}-worker-0"])
        await cluster.run_pod(f"{JOB}-worker-0")

        # While it runs: step, epoch, iteration, ETA on the page; the page follows the trainer by itself.
        await b.open(f"/jobs/{JOB}")
        await b.wait_text("#progress", "1/4 with-bn", "2 / 4", "20 / 40", "1:05:00")
        log["text"] = as_log(a_run())
        text = await b.wait_text("#progress", "2/4 fusion-bn-c1", "0:02:05", "1:02:05", "123.4")
        assert "backbone BN folded" in text
        branches = await b.wait_text("#branches", "det_person", "seg_lane", "hm 0.32", "precision 0.4", "miou 0.5")
        assert "ce 0.32" in branches
        assert "det_person" in await b.text("#chart-loss") and "seg_lane mIoU" in await b.text("#chart-seg")
        assert await b.count("#chart-loss polyline") == 2 and await b.count("#chart-det circle") == 2
        # kubectl get trainjobs' columns: the operator's status.progress, on the jobs list too.
        await b.open("/jobs?tab=running")
        await b.wait_text("#jobs", JOB, "2/4 fusion-bn-c1", "1:02:05", timeout=20)
        await b.open(f"/jobs/{JOB}")
        await b.wait_text("#progress", "2/4 fusion-bn-c1")
        await b.scroll_to("#progress")
        await b.shot("09-job-progress")

        # The job ends; its outputs (with progress.jsonl and the job record) are synced as a new version.
        log["text"] = as_log(finished_run())
        output = model_folder(tmp_path / "output")
        (output / records.FILE_NAME).write_text("".join(records.encode(r) + "\n" for r in finished_run()))
        monkeypatch.setenv("JOB_NAME", JOB)
        monkeypatch.setenv("AIDI_JOB_UID", job["metadata"]["uid"])
        monkeypatch.setenv("AIDI_JOB_NAMESPACE", NS)
        monkeypatch.setenv("AIDI_JOB_IMAGE", "aidi/jobimage:1.0")
        monkeypatch.setenv("AIDI_CODE_SHA256", "c0de" * 16)
        (output / "aidi-job.json").write_text(json.dumps(job_record(
            [{"name": "adasmini_4pe", "type": "trainset", "requested": "latest", "version": "v1"}],
            "2026-12-04T21:00:00Z")))
        await asyncio.to_thread(ds.upload_dataset, "adasmini_4pe_models", "dataset", output)
        await cluster.finish_pod(f"{JOB}-worker-0")
        await cluster.wait_phase(JOB, "Succeeded")

        # A model version from those outputs, with the report of `aidi eval`, then a second one to compare.
        eval_dir = tmp_path / "eval" / "vehicle"
        from aidi import evaluate

        await asyncio.to_thread(evaluate.evaluate, *hand_case(), out_dir=eval_dir)
        spec = write_append_yaml(tmp_path / "model_append.yaml", "dataspace://adasmini_4pe_models/dataset/latest",
                                 FILES=["fusion-bn-c2-export-last-*"],
                                 EVAL_RESULTS={"vehicle": "eval/vehicle/results.json"},
                                 METRICS={"seg_lane": {"task": "parsing", "miou": 0.66}})
        registry = ModelRegistry(ds.store, uploader=dataspace.access_key)   # the team's account: the console shows it
        record = await asyncio.to_thread(registry.append_spec, load_append_spec(spec), ds)
        assert record.lineage is not None and record.lineage["job"]["uid"] == job["metadata"]["uid"]
        await asyncio.to_thread(lambda: registry.append(MODEL, [(p.name, p) for p in sorted(output.glob("int-*"))],
                                                        metrics={"vehicle": {"task": "detection",
                                                                             "map_all_point": 0.71},
                                                                 "seg_lane": {"task": "parsing", "miou": 0.69}}))

        # The job page: all steps done, the curves of the whole run, the versions it fetched, the model made from it.
        await b.open(f"/jobs/{JOB}")
        await b.wait_text("#progress", "all 4 steps done")
        await b.wait_text("#job-lineage", "adasmini_4pe/trainset@v1", "asked for latest")
        await b.wait_text("#job-models", f"{MODEL} v1", "vehicle")
        assert await b.count("#chart-loss polyline") == 2 and await b.count("#chart-det circle") == 6
        await b.scroll_to(".charts")
        await b.shot("10-job-finished-curves")
        await b.scroll_to("#job-lineage")
        await b.shot("10-job-finished-lineage")

        # Models: versions side by side, the best of each column in bold.
        await b.click("#nav-models")
        table = await b.wait_text("#models", MODEL, "v1", "v2", "vehicle mAP", "seg_lane mIoU")
        assert "0.8333" in table and "0.71" in table and "0.69" in table
        assert await b.text("#models b.best") == "0.8333 0.69"
        await b.shot("11-models-compare")

        # The model page: job → datasets → output → this version, and the report one click away.
        await b.click("#models tbody tr:first-child a")
        lineage = await b.wait_text("#lineage", JOB, job["metadata"]["uid"], "aidi/jobimage:1.0",
                                    "adasmini_4pe/trainset@v1", "adasmini_4pe_models/dataset@v1")
        assert "asked for latest" in lineage
        await b.wait_text("#reports", "vehicle", "report.html")
        await b.shot("12-model-lineage")
        # ... and back from the dataset version: the models trained on it.
        await b.click("#lineage li:nth-child(2) a")
        await b.wait_text("#used-by", f"{MODEL} v1", JOB)
        await b.scroll_to("#used-by")
        await b.shot("15-dataset-used-by")
        await b.click_back()
        await b.wait_text("#reports", "vehicle")
        href = await b.attribute("#reports a.report", "href")
        await b.open(href.removeprefix(console))
        # The report's own script rendered it (served sandboxed: its script never sees the console's session).
        await b.wait_text("body", "Evaluation report", "car", "0.833", "fp count")
        await b.shot("13-eval-report")
        await b.click_back()
        await b.click("#lineage-job")
        await b.wait_text("#progress", "all 4 steps done")

        # 中文
        await b.open(f"/jobs/{JOB}?lang=zh")
        await b.wait_text("#live", "训练进度", "各分支训练损失", "数据血缘", "实际拉取的数据集版本")
        await b.scroll_to("#progress")
        await b.shot("14-job-progress-zh")
    await api.close()
