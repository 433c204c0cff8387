"""The demo (`make demo`): the whole AIDI workflow on this machine, with the commands a user types.

    python -m aidi.demo [--workdir work/demo] [--images 200]

sample adas_mini → pack the 8 scenes → upload them to the local dataspace → `traincli submit -f
examples/train_job.yaml` to a `local` cluster → pipeline-test training through the 4 steps, its progress shown as
`traincli status` shows it → predict → evaluate → model append (with the reports and the job's lineage) →
lineage both ways → compile, then a summary table and where to find the curves and the reports. Everything
lives in the work folder: the
dataspace (``file://``), ``gpucluster.yaml`` and the local cluster; ``~/.olympus`` and ``~/.hobot`` are
never read or written (``AIDI_DATASPACE_ENDPOINT`` and ``AIDI_GPUCLUSTER_CONFIG`` point into the folder).
Reference: docs/local.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from aidi import cmdline
from aidi.errors import AidiError

REPO = Path(__file__).resolve().parents[1]
JOB_FILE = REPO / "examples" / "train_job.yaml"
TOOLKIT = REPO / "examples" / "auto_matrix_development_toolkit"
TRAIN_CONFIG = TOOLKIT / "scripts" / "auto_matrix_algo" / "configs" / "4pe_resize" / "multitask.py"
JOB = "adasmini-4pe"
DATASET = "adasmini_4pe"
OUTPUT_DATASET = "adasmini_4pe_models"
MODEL_NAME = "adasmini_4pe_multitask"
DETECTION_SCENES = ("cyclist", "pedestrian", "traffic_light", "traffic_sign", "vehicle", "vehicle_rear")
PARSING_SCENES = ("default_parsing", "lane_parsing")
COMPILE_SCENES = ("vehicle", "lane_parsing")


class DemoFailed(AidiError):
    exit_code = 1


@dataclass
class StepResult:
    name: str
    seconds: float
    figure: str


@dataclass
class Demo:
    workdir: Path
    images: int = 200
    samples: int = 8  # images per rec for the compile check
    scenes: tuple[str, ...] = (*DETECTION_SCENES, *PARSING_SCENES)  # predicted and evaluated
    out: IO[str] = field(default=sys.stdout)
    results: list[StepResult] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ,
                    "AIDI_DATASPACE_ENDPOINT": f"file://{self.workdir / 'dataspace'}",
                    "AIDI_GPUCLUSTER_CONFIG": str(self.workdir / "gpucluster.yaml"),
                    "AIDI_PYTHON": sys.executable,
                    "PATH": bin_dir + os.pathsep + os.environ.get("PATH", os.defpath)}
        for var in ("AIDI_DATASPACE_BUCKET", "AIDI_DATASPACE_ACCESS_KEY", "AIDI_DATASPACE_SECRET_KEY"):
            self.env.pop(var, None)

    # ---------------------------------------------------------------------------------- plumbing

    def rel(self, path: Path) -> str:
        """``path`` as the commands name it: relative to the work folder (shorter to read)."""
        return os.path.relpath(path, self.workdir)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self, argv: list[str], cwd: Path | None = None, capture: bool = False, check: bool = True,
            quiet: bool = False) -> str:
        """Run a command as a user would, its output indented; returns stdout when ``capture`` (JSON)."""
        where = cwd or self.workdir
        shown = shlex.join(argv)
        if not quiet:
            self.say(f"  $ {'cd ' + os.path.relpath(where, self.workdir) + ' && ' if where != self.workdir else ''}"
                     f"{shown}")
        proc = subprocess.Popen(argv, cwd=where, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, bufsize=1)
        captured: list[str] = []

        def pump(stream: IO[str], keep: bool) -> None:
            for line in stream:
                if keep:
                    captured.append(line)
                else:
                    self.say("    " + line.rstrip("\n")[:200])

        threads = [threading.Thread(target=pump, args=(proc.stdout, capture)),
                   threading.Thread(target=pump, args=(proc.stderr, False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        code = proc.wait()
        if check and code != 0:
            raise DemoFailed(f"`{shown}` exited with code {code} (in {where}); its output is above")
        return "".join(captured)

    def run_json(self, argv: list[str], cwd: Path | None = None) -> Any:
        return json.loads(self.run([*argv, "--json"], cwd=cwd, capture=True))

    def step(self, index: int, total: int, name: str, func: Any) -> None:
        self.say(f"\n==> [{index}/{total}] {name}")
        start = time.monotonic()
        figure = func()
        seconds = time.monotonic() - start
        self.results.append(StepResult(name, seconds, figure))
        self.say(f"    ✓ {name}: {figure} ({seconds:.1f} s)")

    # -------------------------------------------------------------------------------------- steps

    def sample(self) -> str:
        data = self.run_json(["aidi", "sample", "adas-mini", "--out", "data/adas_mini", "--images", str(self.images)])
        total = sum(data["images"].values())
        self.figures["images"] = total
        return f"{total} images in {len(data['images'])} scenes"

    def pack(self) -> str:
        self.run(["bash", self.rel(REPO / "tools" / "pipeline.sh"), "--all"])
        records = 0
        for manifest in sorted((self.workdir / "data" / "rec").glob("*/manifest.json")):
            counts = json.loads(manifest.read_text())["counts"]
            records += counts["train"] + counts["val"]
        self.figures["records"] = records
        return f"{records} records packed"

    def upload(self) -> str:
        data = self.run_json(["hitc", "dataspace", "upload", "-n", DATASET, "-t", "trainset", "-f", "./"],
                             cwd=self.workdir / "data" / "rec")
        self.figures["dataset_version"] = data["version"]
        self.figures["uploaded_mb"] = mb = data["transferred_bytes"] / 1e6
        if data.get("unchanged"):  # a re-run: the same files are already the latest version
            return f"already there: {DATASET}/trainset/{data['version']} ({data['bytes'] / 1e6:.1f} MB)"
        return f"{mb:.1f} MB uploaded → {DATASET}/trainset/{data['version']}"

    def submit(self) -> str:
        # A local cluster whose jobs live in the work folder; PIPELINE_TEST=1 makes the example's run.sh
        # pass --pipeline-test (the runner adds AIDI_CTX=cpu itself when there is no GPU).
        config = {"current-cluster": "local",
                  "clusters": {"local": {"type": "local", "workdir": str(self.workdir / "cluster"),
                                         "env": {"PIPELINE_TEST": "1"}}}}
        path = self.workdir / "gpucluster.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        self.say(f"  (wrote {path.relative_to(self.workdir)}: a `type: local` cluster, env PIPELINE_TEST=1)")
        if (self.workdir / "cluster" / "namespaces" / "default" / "trainjobs" / JOB).exists():
            self.run(["traincli", "delete", JOB])
        data = self.run_json(["traincli", "submit", "-f", self.rel(JOB_FILE)])
        return f"TrainJob {data['name']} on cluster {data['cluster']} ({data['package_files']} files of code)"

    def train(self) -> str:
        deadline = time.monotonic() + 30
        while not json.loads(self.run(["traincli", "status", JOB, "--json"], capture=True)).get("pods"):
            if time.monotonic() > deadline:
                raise DemoFailed(f"job {JOB} has no pods after 30 s; `traincli status {JOB}` says why")
            time.sleep(1)
        for container in ("fetch-code", "fetch-data"):
            self.run(["traincli", "logs", JOB, "--container", container, "-f"], check=False)
        self.watch_progress()
        self.run(["traincli", "wait", JOB, "--interval", "1"])
        self.run(["traincli", "status", JOB])   # the last progress: all 4 steps, the final losses and validation
        self.run(["hitc", "dataspace", "download", OUTPUT_DATASET, "-t", "dataset", "-o", "output", "-q"])
        metrics = json.loads((self.workdir / "output" / "metrics.json").read_text())
        loss = _final_loss(metrics)
        self.figures["final_loss"] = loss
        steps = sorted(self.workdir.joinpath("output").glob("*-export-last-symbol.json"))
        return (f"Succeeded; final loss {loss:.3f}; {len(steps)} exported models in "
                f"{OUTPUT_DATASET}/dataset/latest")

    def watch_progress(self) -> None:
        """What a user sees polling `traincli status` while the job runs: a line whenever step or epoch moves."""
        from aidi.cluster.explain import render_progress

        self.say(f"  $ traincli status {JOB}   # every 2 s while it runs; the progress lines:")
        shown = None
        while True:
            report = json.loads(self.run(["traincli", "status", JOB, "--json"], capture=True, quiet=True))
            progress = report.get("progress") or {}
            key = (progress.get("step"), progress.get("epoch"), progress.get("state"))
            if progress and key != shown:
                shown = key
                for line in render_progress(progress)[:2]:
                    self.say("    " + line)
            if report.get("phase") in ("Succeeded", "Failed") or report.get("cancelled"):
                return
            time.sleep(2)

    def predict(self) -> str:
        for scene in self.scenes:
            self.run(["aidi", "predict", "--model", "output/fusion-bn-c2-export-last",
                      "--rec", f"data/rec/{scene}/val.rec", "--out", f"pr/{scene}.json",
                      "--config", self.rel(TRAIN_CONFIG)])
        return f"{len(self.scenes)} val sets predicted with fusion-bn-c2"

    def evaluate(self) -> str:
        aps, mious = {}, {}
        for scene in self.scenes:
            self.run(["aidi", "eval", "--gt", f"data/rec/{scene}/val.rec", "--pr", f"pr/{scene}.json",
                      "--out", f"eval/{scene}"])
            summary = json.loads((self.workdir / "eval" / scene / "results.json").read_text())["summary"]
            if scene in PARSING_SCENES:
                mious[scene] = summary["miou"]
            else:
                aps[scene] = summary["map_all_point"]
        ap = sum(aps.values()) / max(len(aps), 1)
        miou = sum(mious.values()) / max(len(mious), 1)
        self.figures.update(ap=ap, miou=miou, ap_by_scene=aps, miou_by_scene=mious)
        for scene in self.scenes:
            self.say(f"    report: {self.workdir / 'eval' / scene / 'report.html'}")
        return (f"AP@0.5 {ap:.3f} (mean of {len(aps)} scenes), mIoU {miou:.3f} ({len(mious)} scenes); "
                f"reports in eval/<scene>/report.html")

    def model_append(self) -> str:
        spec = {"REQUIRED": {"MODEL_NAME": MODEL_NAME,
                             "MODEL_PATH": f"dataspace://{OUTPUT_DATASET}/dataset/latest"},
                "OPTIONAL": {"FILES": ["fusion-bn-c2-export-last-*", "int-inference-export-last-*", "metrics.json"],
                             # the job, its image and code, the dataset versions: from the outputs' job record
                             "METRICS": {"final_loss": round(self.figures["final_loss"], 4),
                                         "ap": round(self.figures["ap"], 4), "miou": round(self.figures["miou"], 4)},
                             "EVAL_RESULTS": {s: f"eval/{s}/results.json" for s in self.scenes},
                             "DESCRIPTION": "make demo: pipeline-test run on the local cluster"}}
        (self.workdir / "model_append.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        data = self.run_json(["hitc", "model", "append", "-f", "model_append.yaml"])
        files = data.get("files") or []
        self.figures["model_version"] = data["version"]
        self.figures["reports"] = [r["label"] for r in data.get("reports") or []]
        with_md5 = sum(1 for f in files if f.get("md5"))
        return (f"{MODEL_NAME} {data['version']}: {len(files)} files, {with_md5} with md5, "
                f"{len(self.figures['reports'])} eval reports stored with it")

    def lineage(self) -> str:
        """The chain both ways: the model's job and datasets, and the models trained on the dataset version."""
        self.run(["hitc", "model", "show", MODEL_NAME, "--version", self.figures["model_version"]])
        record = self.run_json(["hitc", "model", "show", MODEL_NAME, "--version", self.figures["model_version"]])
        lineage = record.get("lineage") or {}
        trained_on = [d["version"] for d in lineage.get("datasets") or [] if d["name"] == DATASET]
        if not trained_on:
            raise DemoFailed(f"{MODEL_NAME} {record['version']} records no {DATASET} version in its lineage")
        self.figures["lineage"] = lineage
        used = self.run_json(["hitc", "dataspace", "show", DATASET, "-t", "trainset", "--version", trained_on[0],
                              "--used-by"])
        self.run(["hitc", "dataspace", "show", DATASET, "-t", "trainset", "--version", trained_on[0], "--used-by"])
        self.run(["hitc", "model", "list", "--metrics"])
        users = [f"{m['name']} {m['version']}" for m in used["used_by"]]
        return (f"{MODEL_NAME} {record['version']} ← job {lineage['job'].get('name')} ← {DATASET}/trainset "
                f"{trained_on[0]}; {DATASET}/trainset {trained_on[0]} → {', '.join(users)}")

    def compile(self) -> str:
        argv = ["aidi", "compile", "--model", "output/int-inference-export-last", "--target", "onnx",
                "--out", "compiled", "--config", self.rel(TRAIN_CONFIG), "--samples", str(self.samples),
                "--model-name", MODEL_NAME]
        for scene in COMPILE_SCENES:
            argv += ["--rec", f"data/rec/{scene}/val.rec"]
        self.run(argv)
        report = json.loads((self.workdir / "compiled" / "compile.json").read_text())
        passed = bool(report.get("passed", report.get("check", {}).get("passed")))
        self.figures["compile_passed"] = passed
        return f"ONNX check {'passed' if passed else 'FAILED'} → compiled/model.onnx, stored with the model"

    # ---------------------------------------------------------------------------------------- all

    def run_all(self) -> int:
        if not JOB_FILE.is_file():
            raise DemoFailed(f"{JOB_FILE} is missing: the demo runs from a clone of the repository (`make demo`)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stale in ("output", "pr", "eval", "compiled"):  # a re-run's artefacts come from its own job
            shutil.rmtree(self.workdir / stale, ignore_errors=True)
        self.say(f"AIDI demo in {self.workdir} (dataspace, cluster and configs all inside it)")
        steps = [("sample adas_mini", self.sample), ("pack 8 scenes", self.pack), ("upload", self.upload),
                 ("submit", self.submit), ("train (4 steps, pipeline test)", self.train),
                 ("predict", self.predict), ("evaluate", self.evaluate), ("model append", self.model_append),
                 ("lineage", self.lineage), ("compile", self.compile)]
        start = time.monotonic()
        for i, (name, func) in enumerate(steps, 1):
            self.step(i, len(steps), name, func)
        total = time.monotonic() - start
        self.say("\n" + summary_table(self.results, total))
        self.say("\n" + self.links())
        write = dict(self.figures, steps=[r.__dict__ for r in self.results], seconds=round(total, 1))
        (self.workdir / "demo.json").write_text(json.dumps(write, indent=1))
        return 0 if self.figures.get("compile_passed") else 1


    def links(self) -> str:
        """Where to look next: the curves and the reports, one command or click away."""
        model = f"{MODEL_NAME}/{self.figures.get('model_version', 'v1')}"
        env = f"AIDI_DATASPACE_ENDPOINT=file://{self.workdir / 'dataspace'}"
        config = self.workdir / "gpucluster.yaml"
        lines = ["progress and curves:",
                 f"  AIDI_GPUCLUSTER_CONFIG={config} traincli status {JOB}",
                 f"  {env} aidi console -c {config}",
                 f"    → open the link it prints: /jobs/{JOB} (progress, curves, lineage), /models (versions side "
                 f"by side), /models/{model} (lineage, reports)",
                 f"  the records themselves: {self.workdir / 'output' / 'progress.jsonl'} (docs/progress.md)",
                 "evaluation reports (also stored with the model version, under eval/<scene>/):"]
        lines += [f"  {self.workdir / 'eval' / scene / 'report.html'}" for scene in self.scenes]
        return "\n".join(lines)


def _final_loss(metrics: dict[str, Any]) -> float:
    """The mean loss of the last epoch of the last trained step (fusion-bn-c2), from metrics.json."""
    found: float | None = None
    for step in (metrics.get("steps") or {}).values():  # in step order
        train = step.get("train") or {} if isinstance(step, dict) else {}
        if train.get("epoch_losses"):
            found = float(train["epoch_losses"][-1])
    if found is None:
        raise DemoFailed("metrics.json of the training job has no training loss (steps.<step>.train.epoch_losses)")
    return found


def summary_table(results: list[StepResult], total: float) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'step':<{width}}  {'time':>8}  key figure", f"{'-' * width}  {'-' * 8}  {'-' * 10}"]
    lines += [f"{r.name:<{width}}  {r.seconds:>7.1f}s  {r.figure}" for r in results]
    lines.append(f"{'total':<{width}}  {total:>7.1f}s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cmdline.new_parser(
        "python -m aidi.demo",
        "The whole AIDI workflow on this machine, on the embedded defaults (a local dataspace folder and a "
        "local cluster), inside one work folder.",
        "example:\n  make demo                                    # = python -m aidi.demo --workdir work/demo\n"
        "  python -m aidi.demo --workdir /tmp/d --images 100\nReference: docs/local.md",
    )
    parser.add_argument("--workdir", type=Path, default=Path("work/demo"),
                        help="the demo's folder (default: work/demo); re-running reuses it")
    parser.add_argument("--images", type=int, default=200, help="images per scene of the sample (default: 200)")
    parser.add_argument("--fresh", action="store_true", help="remove the work folder first")
    parser.set_defaults(func=lambda args: _run(args))
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    return Demo(args.workdir, images=args.images).run_all()


def main(argv: Sequence[str] | None = None) -> int:
    return cmdline.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
