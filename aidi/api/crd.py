"""Generate the TrainJob CustomResourceDefinition from the pydantic models in ``aidi.api.trainjob``.

    python -m aidi.api.crd -o crds/trainjobs.aidi.io.yaml     # regenerate after changing the models
    python -m aidi.api.crd --check crds/trainjobs.aidi.io.yaml  # exit 1 when the file has drifted

Kubernetes wants a *structural* schema: no ``$ref``, every node typed, no ``additionalProperties``
beside ``properties``. Pydantic's JSON schema is turned into one here, so the models stay the only
place where a field is declared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from aidi.api import trainjob as tj

HEADER = (
    "# Generated from aidi/api/trainjob.py by `python -m aidi.api.crd -o crds/trainjobs.aidi.io.yaml`.\n"
    "# Do not edit by hand: tests/test_crd.py fails when this file and the models disagree.\n"
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase"},
    {
        "name": "Workers",
        "type": "integer",
        "jsonPath": ".status.workers.active",
        "description": "Running worker pods",
    },
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpusPerWorker", "description": "GPUs per worker"},
    {"name": "Step", "type": "string", "jsonPath": ".status.progress.step", "description": "Quantization step"},
    {"name": "Epoch", "type": "string", "jsonPath": ".status.progress.epoch", "priority": 1},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "priority": 1},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "description": "Time left for the job"},
    {"name": "Priority", "type": "integer", "jsonPath": ".spec.priority", "priority": 1},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

def _cel_string(text: str) -> str:
    """A CEL string literal of ``text`` (a regex): single-quoted, backslashes and quotes escaped."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Cross-field rules the API server enforces at `kubectl apply` time (CEL, Kubernetes >= 1.25). Per-value
# rules are OpenAPI patterns and lengths instead wherever one will do: CEL's cost budget is estimated from
# the largest possible input, and regex matches over long strings in maps exhaust it quickly.
WORKERS_VALIDATIONS = [{"rule": "self.min <= self.max", "message": "workers.min must not exceed workers.max"}]

_DROP_KEYS = {"title", "additionalProperties", "$defs"}


def _map_keys(node: dict[str, Any]) -> dict[str, Any]:
    """pydantic's ``patternProperties`` / ``propertyNames`` (a dict with constrained keys) are not allowed in a
    structural schema: the value schema becomes ``additionalProperties`` and the key rule a CEL validation."""
    node = dict(node)
    patterns = node.pop("patternProperties", None) or {}
    names = node.pop("propertyNames", None) or {}
    if len(patterns) != 1:
        raise ValueError(f"expected one key pattern, got {list(patterns)}")
    (pattern, value), = patterns.items()
    node["additionalProperties"] = value
    rule = f"self.all(k, k.matches({_cel_string(pattern)})"
    if "maxLength" in names:
        rule += f" && k.size() <= {names['maxLength']}"
    node["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", []), {
        "rule": rule + ")",
        "message": "each key must be a label key such as example.com/gpu-type or cpu: letters, digits, '-', '_' "
                   "and '.', with an optional DNS-name prefix and '/'",
    }]
    return node


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline refs, drop nulls from optional unions, and strip keys Kubernetes rejects."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("x-kubernetes-int-or-string"):
            # As controller-gen writes resource.Quantity: the string branch's pattern and length at the top
            # (JSON Schema applies them to strings only), the two branches bare.
            strings = [b for b in branches if b.get("type") == "string"]
            kept = {k: v for k, v in rest.items() if k != "default"}
            if strings and ("pattern" in strings[0] or "maxLength" in strings[0]):
                kept["anyOf"] = [{"type": "integer"}, {"type": "string"}]
                kept |= {k: strings[0][k] for k in ("pattern", "maxLength") if k in strings[0]}
            return _structural(kept, defs)
        if len(branches) == 1:
            if rest.get("default", "unset") is None:
                rest.pop("default")
            return _structural({**branches[0], **rest}, defs)
        raise ValueError(f"cannot express a union in a structural schema: {node}")
    if "patternProperties" in node:
        node = _map_keys(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if out.get("type") == "object" and "properties" in out:
        out.pop("additionalProperties", None)
    return out


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return schema


def openapi_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the TrainJob CRD."""
    spec = _model_schema(tj.TrainJobSpec)
    spec["properties"]["workers"]["x-kubernetes-validations"] = WORKERS_VALIDATIONS
    status = _model_schema(tj.TrainJobStatus)
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "type": "object",
        "description": "A training job: worker pods that run the job image on the job's code package.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Only metadata.name may be constrained in a CRD: a DNS-1035 label short enough for the pods'
            # names (and hostnames), "<job>-worker-255" included.
            "metadata": {"type": "object", "properties": {"name": {
                "type": "string", "maxLength": tj.MAX_JOB_NAME, "pattern": tj.DNS1035_LABEL}}},
            "spec": spec,
            "status": status,
        },
    }


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": tj.CRD_NAME, "labels": {"app.kubernetes.io/part-of": "aidi"}},
        "spec": {
            "group": tj.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": tj.KIND,
                "listKind": f"{tj.KIND}List",
                "plural": tj.PLURAL,
                "singular": tj.SINGULAR,
                "shortNames": tj.SHORT_NAMES,
                "categories": ["aidi", "all"],
            },
            "versions": [
                {
                    "name": tj.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    """The CRD file's exact text."""
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aidi.api.crd", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", type=Path, help="write the CRD to this file (default: stdout)")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the models")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.check.exists() or args.check.read_text() != text:
            print(f"{args.check} has drifted from aidi/api/trainjob.py; regenerate it with "
                  f"`python -m aidi.api.crd -o {args.check}`", file=sys.stderr)
            return 1
        return 0
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
