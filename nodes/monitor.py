"""The training monitor's Python half: engine callbacks -> ComfyUI's progress bar, ``likeness.*`` events for the page
(``web/js/likeness_monitor.js`` draws them) and sample and probe images in the temp folder; Cancel becomes the
engine's stop."""

from __future__ import annotations

import logging

from . import bridge

log = logging.getLogger(__name__)


class TrainingMonitor:
    """Engine callbacks -> ComfyUI progress bar, likeness.* events and sample files in the temp folder."""

    def __init__(self, node_id: str, total: int, name: str):
        self.node_id, self.name = node_id, name
        self.bar = bridge.Progress(total, node_id=node_id)
        self.interrupt: BaseException | None = None  # the host's exception, raised after a clean stop
        self.sample_files: list[dict[str, str]] = []

    def stop(self) -> bool:
        return self.interrupt is not None or bridge.interrupted()

    def on_progress(self, info) -> None:
        bridge.send_event("progress", {"node_id": self.node_id, **info.as_event()})
        if info.phase == "training" and self.interrupt is None and not bridge.interrupted():
            try:
                self.bar.set(info.step)  # also the host's interruption point
            except Exception as e:  # noqa: BLE001 - the host's interrupt: stop cleanly at the next step
                self.interrupt = e

    def on_sample(self, step: int, images: list, prompts: list[str]) -> None:
        folder = bridge.temp_dir() / bridge.SUBFOLDER
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, im in enumerate(images):
            fname = f"train_{self.node_id}_{self.name}_{step:06d}_{i}.png"
            im.save(folder / fname)
            files.append({"filename": fname, "subfolder": bridge.SUBFOLDER, "type": "temp"})
        self.sample_files = files
        bridge.send_event("sample", {"node_id": self.node_id, "step": step, "images": files, "prompts": prompts})

    def on_status(self, text: str) -> None:
        log.info("likeness: %s", text)

    def on_evaluation(self, info) -> None:
        """A likeness evaluation: its numbers and probe images (in the temp folder) to the page."""
        folder = bridge.temp_dir() / bridge.SUBFOLDER
        files = []
        if info.images:
            folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(info.images):
            fname = f"eval_{self.node_id}_{self.name}_{info.step:06d}_{info.state}_{i}.png"
            im.save(folder / fname)
            files.append({"filename": fname, "subfolder": bridge.SUBFOLDER, "type": "temp"})
        bridge.send_event("evaluation", {"node_id": self.node_id, **info.as_event(), "images": files})
        if info.state != "off":
            from ..trainers.train.evaluation import evaluation_line

            log.info("likeness: step %d: %s", info.step, evaluation_line(info))
