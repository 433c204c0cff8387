"""The pod watch's partial decoding of events (aidi_operator.pods.decode_event): what the decision reads of a
pod is the same as from the whole event, whatever the pod's strings hold, and anything not shaped as the API
server writes it is decoded whole."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aidi_operator.pods import PodIndex, decode_event

from aidi.jobs import podspec
from aidi.jobs.lifecycle import PodState, pod_state

TRICKY = 'ends with ,"status":{"phase":"Succeeded"}} and ,"managedFields":[ and "metadata":{ — ünïcödé'


def api_pod(message: str = "0/3 nodes are available", annotation: str = "x") -> dict[str, Any]:
    """A pod as the API server writes it: Go's field order, managedFields last in the metadata."""
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "j-worker-0", "namespace": "team-a", "uid": "u1", "resourceVersion": "42",
                     "labels": {podspec.LABEL_JOB: "j", podspec.LABEL_MANAGED_BY: podspec.MANAGED_BY,
                                podspec.LABEL_ROLE: "worker", podspec.LABEL_INDEX: "0"},
                     "annotations": {"note": annotation},
                     "managedFields": [{"manager": "aidi", "fieldsV1": {"f:spec": {"f:containers": {
                         'k:{"name":"trainer"}': {".": {}, "f:status": {}}}}}}]},
        "spec": {"containers": [{"name": "trainer", "image": "x", "env": [{"name": "status", "value": '{"a":1}'}]}]},
        "status": {"phase": "Failed", "conditions": [{"type": "PodScheduled", "status": "False", "message": message}],
                   "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                       "exitCode": 3, "reason": "Error", "message": message}}}]},
    }


def line(event_type: str, pod: dict[str, Any], **dumps: Any) -> bytes:
    return json.dumps({"type": event_type, "object": pod}, separators=(",", ":"), **dumps).encode()


@pytest.mark.parametrize("message", ["plain", TRICKY])
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_partial_decoding_reads_what_the_whole_event_says(message: str, ensure_ascii: bool) -> None:
    pod = api_pod(message, annotation=TRICKY)
    event = decode_event(line("MODIFIED", pod, ensure_ascii=ensure_ascii))
    assert event["type"] == "MODIFIED"
    assert "spec" not in event["object"] and "managedFields" not in event["object"]["metadata"]  # skipped
    assert event["object"]["metadata"]["annotations"]["note"] == TRICKY
    assert pod_state(event["object"]) == pod_state(pod)
    assert pod_state(event["object"]).failure is not None and pod_state(event["object"]).failure.message == message


@pytest.mark.parametrize("pod", [
    {**api_pod(), "metadata": {k: v for k, v in api_pod()["metadata"].items() if k != "managedFields"}},  # kmock
    {**{k: v for k, v in api_pod().items() if k != "status"}, "status": api_pod()["status"], "extra": 1},
    {k: v for k, v in api_pod().items() if k != "status"},  # no status at all
])
def test_other_shapes_are_decoded_whole(pod: dict[str, Any]) -> None:
    event = decode_event(json.dumps({"type": "ADDED", "object": pod}, separators=(",", ":")).encode())
    assert event == {"type": "ADDED", "object": pod}


def test_bookmarks_and_errors_are_decoded_whole() -> None:
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                               "metadata": {"resourceVersion": "77"}}}
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    assert decode_event(json.dumps(bookmark, separators=(",", ":")).encode()) == bookmark
    assert decode_event(json.dumps(gone, separators=(",", ":")).encode()) == gone


def test_the_index_keeps_an_unchanged_pods_object_and_reports_only_changes() -> None:
    index = PodIndex()
    first = pod_state(api_pod())
    assert index.put("team-a", "j", first) == {("team-a", "j")}
    assert index.put("team-a", "j", pod_state(api_pod())) == set()  # the same state again: nothing to do
    assert index.get(("team-a", "j"))[0] is first
    moved = PodState(name="j-worker-0", role="worker", index=0, attempt=None, phase="Running")
    assert index.put("team-a", "k", moved) == {("team-a", "j"), ("team-a", "k")}  # relabelled to another job
    assert index.get(("team-a", "j")) == () and index.get(("team-a", "k")) == (moved,)
    assert index.remove("team-a", "j-worker-0") == {("team-a", "k")} and len(index) == 0
