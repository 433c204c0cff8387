"""Training progress (docs/progress.md): the record contract, what readers make of it (summary, curves, the
job's status.progress, `traincli status`), the charts, and the operator refreshing status.progress from worker
0's log tail (kmock API server; the trainer's own records are tested in tests/test_trainer.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import Any

import kmock
import pytest

from aidi.api import trainjob as tj
from aidi.cluster import explain
from aidi.console import charts
from aidi.jobs import lifecycle
from aidi.jobs import progress as records
from tests.support.operator import eventually, kmock_api, operator_settings, running_operator

BRANCHES = ("det_person", "seg_lane")


def train(step: int, name: str, iteration: int, iterations: int = 40, offset: int = 0, loss: float = 1.0,
          eta_step: float = 300.0, eta_job: float = 3900.0) -> dict[str, Any]:
    return records.record("train", step=step, name=name, epoch=(iteration - 1) // 10 + 1, epochs=iterations // 10,
                          iteration=iteration, iterations=iterations, global_iteration=offset + iteration, loss=loss,
                          branches={"det_person": loss * 0.6, "seg_lane": loss * 0.4},
                          terms={"det_person.hm": loss * 0.4, "det_person.box": loss * 0.2, "seg_lane.ce": loss * 0.4},
                          samples_per_sec=123.4, lr=1e-3, eta_step_s=eta_step, eta_job_s=eta_job)


def val(step: int, name: str, at: int, precision: float, miou: float) -> dict[str, Any]:
    return records.record("val", step=step, name=name, global_iteration=at,
                          branches={"det_person": {"precision": precision, "recall": precision / 2, "tp": 3},
                                    "seg_lane": {"miou": miou, "pixel_accuracy": 0.9}})


def a_run() -> list[dict[str, Any]]:
    """Step 0 trained and validated; step 1 at iteration 20 of 40."""
    return [records.record("plan", steps=[{"step": i, "name": n, "epochs": 4, "iterations": 40}
                                          for i, n in enumerate(("with-bn", "fusion-bn-c1", "fusion-bn-c2"))]),
            records.record("step", step=0, name="with-bn", epochs=4, iterations=40, global_start=0, resumed_epoch=0),
            *(train(0, "with-bn", i, loss=2.0 - i / 40) for i in (10, 20, 30, 40)),
            val(0, "with-bn", 40, 0.4, 0.5),
            records.record("step", step=1, name="fusion-bn-c1", epochs=4, iterations=40, global_start=40,
                           resumed_epoch=0),
            train(1, "fusion-bn-c1", 10, offset=40, loss=0.9), train(1, "fusion-bn-c1", 20, offset=40, loss=0.8,
                                                                     eta_step=125.0, eta_job=3725.0)]


def as_log(recs: list[dict[str, Any]], noise: bool = True) -> str:
    lines = []
    for rec in recs:
        if noise:
            lines.append("21:00:00 [fusion-bn-c1] epoch 1/4 iter 10/40 | loss 0.9 | ... (the human line)")
        lines.append("21:00:00 " + records.MARKER + records.encode(rec))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ contract


def test_writer_appends_whole_lines_and_logs_the_same_records(tmp_path: Path) -> None:
    logged: list[str] = []
    writer = records.Writer(tmp_path, logged.append)
    import numpy as np

    first = writer.write("train", step=0, name="with-bn", loss=np.float32(1.5), terms={"a.b": float("nan")})
    writer.write("done", seconds=12.0)
    assert first["loss"] == 1.5 and first["terms"] == {"a.b": None}  # numpy scalars and NaN made JSON-safe
    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(" " not in line for line in lines)
    assert records.read_file(tmp_path / "progress.jsonl") == records.parse_log("\n".join(logged))
    assert [r["kind"] for r in records.read_file(tmp_path / "progress.jsonl")] == ["train", "done"]


def test_readers_skip_what_is_not_a_whole_record() -> None:
    good = records.encode(train(0, "with-bn", 10))
    text = "\n".join([good[5:],                                   # the cut first line of a tail
                      records.MARKER + good[:-3],                   # a line cut by a crash mid-write
                      records.MARKER + '{"v": 99, "kind": "train"}',  # a future format: not guessed at
                      records.MARKER + "[1, 2]",
                      "loss 0.5 (a line without the marker)",
                      "prefix " + records.MARKER + good])
    assert records.parse_log(text) == [train(0, "with-bn", 10) | {"time": records.parse_log(text)[0]["time"]}]
    assert records.parse_jsonl(good + "\nnot json\n\n" + good + "\n") == [records.parse_jsonl(good)[0]] * 2
    assert records.read_file(Path("/nonexistent/progress.jsonl")) == []


def test_summary_says_where_the_run_stands() -> None:
    summary = records.summarize(a_run())
    assert summary is not None
    assert (summary.step_label, summary.epoch, summary.epochs, summary.iteration, summary.iterations) == \
        ("2/4 fusion-bn-c1", 2, 4, 20, 40)
    assert summary.eta_step_s == 125.0 and summary.to_json()["eta_job"] == "1:02:05"
    assert summary.branches == {"det_person": pytest.approx(0.48), "seg_lane": pytest.approx(0.32)}
    assert summary.val["seg_lane"]["miou"] == 0.5   # step 0's validation, until step 1 has its own
    status = summary.to_status()
    assert (status.step, status.epoch, status.iteration, status.eta, status.step_eta) == \
        ("2/4 fusion-bn-c1", "2/4", "20/40", "1:02:05", "0:02:05")
    assert records.summarize([]) is None
    done = records.summarize([*a_run(), records.record("done", seconds=100.0)])
    assert done is not None and done.to_status().step == "4/4 done" and done.to_status().eta == "0:00:00"


def test_curves_have_a_series_per_branch_on_the_global_iteration_axis() -> None:
    run = a_run()
    # A restarted step logs the same iterations again: each x keeps its newest value, once.
    run += [train(1, "fusion-bn-c1", 20, offset=40, loss=0.7), val(1, "fusion-bn-c1", 80, 0.6, 0.7)]
    c = records.curves(run)
    assert c.steps == [(0, "with-bn"), (40, "fusion-bn-c1")]
    assert [x for x, _ in c.loss["det_person"]] == [10, 20, 30, 40, 50, 60]
    assert c.loss["seg_lane"][-1] == (60, pytest.approx(0.28))
    assert c.val["det_person"] == {"precision": [(40, 0.4), (80, 0.6)], "recall": [(40, 0.2), (80, 0.3)]}
    assert c.val["seg_lane"] == {"miou": [(40, 0.5), (80, 0.7)]}
    assert records.longest(run[:3], run) is run


def test_status_from_a_log_tail_and_after_the_job_ended() -> None:
    tail = as_log(a_run())[-2000:]   # what the runners read: the end only, its first line cut
    found = records.status_from_log(tail)
    assert found is not None and found.step == "2/4 fusion-bn-c1" and found.eta == "1:02:05"
    assert records.status_from_log("no records in this log\n") is None
    ended = records.ended(found, "Failed")
    assert ended is not None and ended.step == "2/4 fusion-bn-c1" and ended.eta is None  # where it stopped
    succeeded = records.ended(found, "Succeeded")
    assert succeeded is not None and (succeeded.step, succeeded.eta, succeeded.epoch) == ("4/4 done", "0:00:00", None)


def test_the_lifecycle_ends_the_progress_with_the_job() -> None:
    job = tj.TrainJob.model_validate({"metadata": {"name": "j", "namespace": "ns"},
                                      "spec": {"image": "i", "command": ["c"]}})
    status = tj.TrainJobStatus(phase="Running", progress=records.status_from_log(as_log(a_run())))
    pod = lifecycle.PodState(name="j-worker-0", role="worker", index=0, attempt=0, phase="Succeeded")
    plan = lifecycle.decide(job, status, [pod], dt.datetime.now(dt.UTC))
    assert plan.status.phase == "Succeeded"
    assert plan.status.progress is not None and plan.status.progress.eta == "0:00:00"


def test_traincli_status_renders_step_epoch_eta_losses_and_validation() -> None:
    job = {"metadata": {"name": "j", "namespace": "ns"}, "spec": {}, "status": {"phase": "Running"}}
    rep = explain.report(job, [], a_run())
    text = "\n".join(explain.render(rep, "j"))
    assert "progress:   step 2/4 fusion-bn-c1, epoch 2/4, iteration 20/40, 123.4 samples/s" in text
    assert "ETA:        step 0:02:05, job 1:02:05" in text
    assert re.search(r"loss:\s+0\.8000 — det_person 0\.48, seg_lane 0\.32", text), text
    assert "terms:      det_person.hm 0.32, det_person.box 0.16, seg_lane.ce 0.32" in text
    assert "val det_person: precision 0.4, recall 0.2" in text and "val seg_lane: miou 0.5" in text
    assert rep.to_json()["progress"]["step_label"] == "2/4 fusion-bn-c1"
    # Without the log (the pod is gone): the runner's summary from the job's status.
    job["status"]["progress"] = {"step": "3/4 fusion-bn-c2", "epoch": "1/4", "loss": 0.5, "eta": "0:10:00"}
    text = "\n".join(explain.render(explain.report(job, []), "j"))
    assert "progress:   step 3/4 fusion-bn-c2, epoch 1/4, loss 0.5, ETA 0:10:00" in text


# --------------------------------------------------------------------------------------------- charts


def test_charts_are_inline_svg_without_styles_with_escaped_labels() -> None:
    chart = charts.Chart("Loss <per> branch", [charts.Series("det_<b>", [(0, 1.0), (10, 0.5)], "#0072b2"),
                                               charts.Series("seg", [(0, 2.0), (10, 1.0)], "#d55e00", dashed=True)],
                         "chart-x", markers=[(5.0, "fusion-bn-c1")])
    svg = charts.render(chart, "nothing yet")
    assert svg.count("<polyline") == 2 and 'stroke-dasharray="6 4"' in svg
    assert "style=" not in svg and "<script" not in svg    # the console's CSP forbids inline styles
    assert "det_&lt;b&gt;" in svg and "Loss &lt;per&gt; branch" in svg and "<b>0.5</b>" in svg
    assert 'class="marker"' in svg and "fusion-bn-c1" in svg
    assert "nothing yet" in charts.render(charts.Chart("t", [], "c"), "nothing yet")
    assert charts.nice_ticks(0, 97) == [0, 25, 50, 75, 100]          # the axis covers every point
    assert charts.nice_ticks(0.0, 1.0, 4) == [0.0, 0.5, 1.0]
    assert charts.nice_ticks(0.31, 0.42, 4) == [0.3, 0.35, 0.4, 0.45]


# ------------------------------------------------------------------------------------------- operator


async def test_the_operator_keeps_status_progress_from_worker_0_s_log_tail(kube_api) -> None:
    """A running job's summary comes from the log tail at the configured interval, is written only when it changed,
    and ends with the job; the kubectl columns read it."""
    log = {"text": as_log(a_run()[:4])}   # step 0, iteration 20
    kube_api["get", kmock.subresource("log")] << (lambda: log["text"].encode())
    api = kmock_api(str(kube_api.url))
    from tests.support.operator import Cluster

    c = Cluster(api, "team-a")
    async with running_operator(operator_settings(str(kube_api.url), progress_seconds=0.3)):
        await c.create_job("watched", nodeSelector=c.node_selector)
        await c.wait_pods("watched", ["watched-worker-0"])
        await c.run_pod("watched-worker-0")
        status = await c.wait_phase("watched", "Running")

        async def progress_is(step: str, iteration: str) -> dict[str, Any] | None:
            got = (await c.status("watched")).get("progress") or {}
            return got if got.get("step") == step and got.get("iteration") == iteration else None

        got = await eventually(lambda: progress_is("1/4 with-bn", "20/40"), timeout=10)
        assert got["eta"] == "1:05:00" and got["epoch"] == "2/4" and got["samplesPerSecond"] == 123.4
        log["text"] = as_log(a_run())   # the trainer moved on
        got = await eventually(lambda: progress_is("2/4 fusion-bn-c1", "20/40"), timeout=10)
        assert got["stepEta"] == "0:02:05"
        # Unchanged log: read again at each interval, never written again.
        writes = sum(1 for r in list(kube_api) if r.method == kmock.method.PATCH
                     and str(r.url).endswith("/watched/status") and "progress" in (r.data or {}).get("status", {}))
        await asyncio.sleep(1.2)
        reads = [r for r in list(kube_api) if str(r.url.path).endswith("/watched-worker-0/log")]
        assert len(reads) >= 3 and all(r.params.get("tailLines") == "40" for r in reads)
        assert sum(1 for r in list(kube_api) if r.method == kmock.method.PATCH
                   and str(r.url).endswith("/watched/status")
                   and "progress" in (r.data or {}).get("status", {})) == writes
        await c.finish_pod("watched-worker-0")
        status = await c.wait_phase("watched", "Succeeded")
        assert status["progress"]["step"] == "4/4 done" and status["progress"]["eta"] == "0:00:00"
    await api.close()


def test_the_crd_prints_step_and_eta_columns() -> None:
    from aidi.api import crd

    columns = {c["name"]: c["jsonPath"] for c in crd.PRINTER_COLUMNS}
    assert columns["Step"] == ".status.progress.step" and columns["ETA"] == ".status.progress.eta"
