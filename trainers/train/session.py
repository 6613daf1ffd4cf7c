"""A training session: one run of a config with everything around it that front ends must agree on.

The CLI and the ComfyUI nodes both go through :class:`Session`, so the same model, images and options give the same
files and the same reuse whichever started the run:

- **content key** (:func:`result_key`): the base model's identity, every option that shapes the weights, the step
  count and the dataset fingerprint (file bytes, not pixels);
- **reuse**: a finished result has a sidecar ``<name>.likeness.json`` (its key and metadata) beside it; a run whose
  key is already in the output folder returns that file instead of training (``force`` trains again);
- **output name**: ``<name>.safetensors``, or the first free ``<name>_N.safetensors``: a result is never replaced
  unless the config says ``overwrite``;
- **resumable states**: one folder per run, ``<state root>/<name>-<key[:16]>/``; a run with states there resumes from
  the newest automatically; a state that cannot be used is moved aside (never deleted) with a message; a finished run
  removes its states; ``force`` removes them first.

:meth:`Session.plan` checks everything (and reads the images) once, before a model is loaded; :meth:`Session.train`
passes that plan on to the loop. Paths read back from sidecars are only trusted when they name a plain file inside
the folder the sidecar is in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configspec import validate
from ..distributed import barrier, is_main
from ..fsutil import clean_stale_parts, write_json_atomic
from .events import Callbacks, TrainOutcome
from .plan import INDEX_SUFFIX, Plan, dataset_hash, free_output_path, output_path, sidecar_path, weights_hash
from .plan import plan as make_plan
from .state import StateError, check_compatible, clean_partials, list_states, read_info, remove_states, set_aside

log = logging.getLogger(__name__)

INDEX_FORMAT = "likeness.result"
__all__ = ["INDEX_SUFFIX", "RunResult", "Session", "find_existing", "free_output_path", "result_key"]


def result_key(model_key: str, config, dataset: str) -> str:
    """Content key of a training result: base weights + every option that shapes the weights + steps + images."""
    blob = json.dumps([model_key, weights_hash(config), config.steps, dataset], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_sidecar(side: Path) -> tuple[Path, dict[str, Any]] | None:
    """(result file, sidecar data) when ``side`` is one of our sidecars naming a plain file beside it, else None."""
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("file")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        return None  # a crafted or damaged sidecar: its path is not trusted
    path = side.parent / name
    if path.is_symlink() or not path.is_file():
        return None
    return path, data


def find_existing(folder: Path, key: str) -> tuple[Path, dict[str, Any]] | None:
    """A finished result with this key in ``folder`` (its sidecar names the file), or None."""
    if not folder.is_dir():
        return None
    for side in sorted(folder.glob(f"*{INDEX_SUFFIX}")):
        found = read_sidecar(side)
        if found is not None and found[1].get("key") == key:
            return found
    return None


@dataclass
class RunResult:
    """What a session hands a front end: a result trained now, one found again, or a stopped run."""

    state: str  # "finished" | "reused" | "stopped"
    path: Path | None
    key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    losses_prior: list[float] = field(default_factory=list)
    samples: list = field(default_factory=list)
    sample_prompts: list[str] = field(default_factory=list)
    steps_done: int = 0
    total_steps: int = 0
    state_path: Path | None = None
    outcome: TrainOutcome | None = None


class Session:
    """One training run of ``config`` (a ``DreamBoothConfig`` or ``LoRAConfig``) and its files.

    ``config.output`` names the wished-for result (its folder is where results are found again); ``model_key`` is
    the base model's identity (``ModelHandle.key``), ``base_hash`` its sha256 for the metadata; ``state_root`` holds
    the per-run state folders (``config.state_dir`` wins when set).
    """

    def __init__(self, config, *, model_key: str, base_hash: str = "", state_root: Path, force: bool = False):
        self.config = validate(config, source=f"{getattr(config, 'kind', 'training')} options")
        self.wanted = Path(config.output).expanduser()
        self.name = self.wanted.stem
        self.base_hash = base_hash
        self.force = force
        self.dataset_hash = dataset_hash(config)
        self.key = result_key(model_key, config, self.dataset_hash)
        root = Path(config.state_dir).expanduser() if config.state_dir else Path(state_root)
        self.state_dir = root / f"{self.name}-{self.key[:16]}"
        self._plan: Plan | None = None
        self.auto_resume = False

    # -- reuse -----------------------------------------------------------------------------------------------------

    def existing(self) -> RunResult | None:
        """The result trained earlier with this key in the output folder (None when ``force`` or none)."""
        if self.force:
            return None
        found = find_existing(self.wanted.parent, self.key)
        if found is None:
            return None
        path, data = found
        log.info("%s was already trained with these inputs; reusing it", path)
        steps = int(data.get("steps") or len(data.get("losses") or []) or self.config.steps)
        return RunResult(
            state="reused",
            path=path,
            key=self.key,
            metadata=dict(data.get("metadata") or {}),
            losses=list(data.get("losses") or []),
            losses_prior=list(data.get("losses_prior") or []),
            steps_done=steps,
            total_steps=steps,
        )

    # -- planning ----------------------------------------------------------------------------------------------------

    def run_config(self):
        """The config the loop gets: a free output name, this run's state folder and the resume policy applied."""
        cfg = self.config
        output = self.wanted if cfg.overwrite else free_output_path(self.wanted.parent, self.name)
        if output != self.wanted:
            log.warning("%s exists (another result); saving as %s", self.wanted, output.name)
        if is_main():  # several processes: one of them tidies the run's files, the others wait for it
            if self.force:
                remove_states(self.state_dir)
            clean_partials(self.state_dir)  # unfinished states of a killed run
            for stale in clean_stale_parts(self.wanted.parent):  # unfinished result files of a killed save
                log.info("removed %s, left by a save that did not finish", stale)
        barrier(cfg.device)
        resume = cfg.resume_from
        self.auto_resume = not resume and bool(list_states(self.state_dir))
        if self.auto_resume:
            resume = "latest"
        return dataclasses.replace(cfg, output=str(output), state_dir=str(self.state_dir), resume_from=resume)

    def plan(self) -> Plan:
        """Check everything and read the images, once; a resumable state that cannot be used is found here."""
        if self._plan is None:
            cfg = self.run_config()
            output_path(cfg)
            the_plan = make_plan(cfg, known_dataset_hash=self.dataset_hash)
            if the_plan.resume is not None:
                self._check_resume(the_plan)
            self._plan = the_plan
        return self._plan

    def _check_resume(self, the_plan: Plan) -> None:
        cfg = the_plan.config
        try:
            info = read_info(the_plan.resume)
            strategy = cfg.make_strategy()
            check_compatible(
                info, the_plan.resume, kind=strategy.name, weights=weights_hash(cfg), dataset=self.dataset_hash,
                steps=cfg.steps,
            )  # fmt: skip
        except StateError as e:
            raise self._unusable(e) from None

    def _unusable(self, error: StateError) -> StateError:
        """An automatically found state that cannot be used is moved aside, so the next run starts afresh."""
        self._plan = None
        if not self.auto_resume or error.path.parent != self.state_dir:
            return error
        moved = set_aside(error.path)
        return StateError(moved, f"{error} It was moved aside to {moved}; run again to start this training afresh.")

    # -- training ----------------------------------------------------------------------------------------------------

    def train(
        self,
        components=None,
        *,
        callbacks: Callbacks | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> RunResult:
        """Train (resuming when a state is there), then record the result; ``components`` are trained in place."""
        from .loop import train

        the_plan = self.plan()
        try:
            outcome = train(
                the_plan.config,
                components=components,
                callbacks=callbacks,
                stop=stop,
                base_hash=self.base_hash,
                the_plan=the_plan,
            )
        except StateError as e:
            raise self._unusable(e) from None
        if outcome.state == "finished" and outcome.path is not None:
            self.record(outcome)
            remove_states(self.state_dir)  # finished: the resumable states are no longer needed
        return RunResult(
            state=outcome.state,
            path=outcome.path,
            key=self.key,
            metadata=dict(outcome.metadata),
            losses=list(outcome.losses),
            losses_prior=list(outcome.losses_prior),
            samples=list(outcome.samples),
            sample_prompts=list(outcome.sample_prompts),
            steps_done=outcome.steps_done,
            total_steps=outcome.total_steps,
            state_path=outcome.state_path,
            outcome=outcome,
        )

    def run(self, components=None, **kwargs: Any) -> RunResult:
        """:meth:`existing`, else :meth:`train`."""
        return self.existing() or self.train(components, **kwargs)

    def record(self, outcome: TrainOutcome) -> Path:
        """Write the sidecar that lets a later run with the same key find this result."""
        side = sidecar_path(outcome.path)
        data = {
            "format": INDEX_FORMAT,
            "version": 1,
            "key": self.key,
            "file": outcome.path.name,
            "kind": outcome.metadata.get("likeness.kind", getattr(self.config, "kind", "")),
            "steps": outcome.steps_done,
            "metadata": outcome.metadata,
            "losses": outcome.losses,
            "losses_prior": outcome.losses_prior,
        }
        write_json_atomic(side, data, overwrite=True)
        return side
