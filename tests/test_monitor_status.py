"""The server side of the training monitor: ``bridge.send_event`` and the state behind ``GET /likeness/status``."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest


class FakePromptServer:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data))


@pytest.fixture
def bridge(pack, monkeypatch):
    from likeness_pack.nodes import bridge as b

    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=FakePromptServer())
    monkeypatch.setitem(sys.modules, "server", server)
    monkeypatch.setattr(b, "_STATE", {"run": None, "history": [], "samples": []})
    b.sent = server.PromptServer.instance.sent
    return b


def test_events_reach_pages_and_the_status_record(bridge):
    bridge.send_event("start", {"node_id": "7", "kind": "dreambooth", "total": 3, "name": "me"})
    payload = {"node_id": "7", "step": 1, "total": 3, "loss": 0.25, "loss_smoothed": 0.25, "lr": 2e-6,
               "elapsed": 0.5, "eta": 1.0, "it_s": 2.0, "phase": "training"}  # fmt: skip
    bridge.send_event("progress", payload)
    payload["step"] = 99  # the caller reusing its dict must not rewrite what was recorded
    bridge.send_event("sample", {"node_id": "7", "step": 1, "prompts": ["p"],
                                 "images": [{"filename": "a.png", "subfolder": "likeness", "type": "temp"}]})  # fmt: skip
    snap = bridge.status_snapshot()
    assert snap["run"]["state"] == "running" and snap["run"]["total"] == 3
    assert [h["step"] for h in snap["history"]] == [1]
    assert snap["samples"][0]["images"][0]["filename"] == "a.png"
    assert [e for e, _ in bridge.sent] == ["likeness.start", "likeness.progress", "likeness.sample"]

    bridge.send_event("end", {"node_id": "7", "state": "stopped", "message": "stopped at step 1"})
    snap = bridge.status_snapshot()
    assert snap["run"]["state"] == "stopped" and snap["run"]["message"] == "stopped at step 1"

    # a new run starts a new record
    bridge.send_event("start", {"node_id": "8", "kind": "lora", "total": 5, "name": "you"})
    snap = bridge.status_snapshot()
    assert snap["run"]["node_id"] == "8" and snap["history"] == [] and snap["samples"] == []


def test_payloads_are_made_json_safe(bridge):
    """A diverging loss (NaN/inf), numpy/tensor scalars and paths must not break the page's JSON parsing."""
    np = pytest.importorskip("numpy")
    bridge.send_event("start", {"node_id": "1", "kind": "dreambooth", "total": 2, "name": "x"})
    bridge.send_event(
        "progress",
        {"node_id": "1", "step": np.int64(2), "total": 2, "loss": float("nan"), "loss_smoothed": math.inf,
         "lr": np.float32(1e-6), "phase": "training", "extra": (1, 2)},
    )  # fmt: skip
    bridge.send_event("end", {"node_id": "1", "state": "finished", "path": Path("/m/likeness/x.safetensors")})
    snap = bridge.status_snapshot()
    text = json.dumps(snap, allow_nan=False)  # what aiohttp and the WS send: must be strict JSON
    h = json.loads(text)["history"][0]
    assert h["step"] == 2 and h["loss"] is None and h["loss_smoothed"] is None
    assert h["lr"] == pytest.approx(1e-6) and h["extra"] == [1, 2]
    assert snap["run"]["path"] == "/m/likeness/x.safetensors"
    json.dumps([d for _, d in bridge.sent], allow_nan=False)
