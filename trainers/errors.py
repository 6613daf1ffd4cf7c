"""Errors that reach users. Each message says what is wrong, where (the file or option) and what to do."""

from __future__ import annotations


class LikenessError(Exception):
    """Base class: a problem the user can fix. The message is shown as is (node error, CLI stderr)."""


class ConfigError(LikenessError, ValueError):
    """An option or config file is invalid. Raised before any work starts."""


class CheckpointError(LikenessError, ValueError):
    """A model file cannot be read, is not SD1.x, or is incomplete."""


class DatasetError(LikenessError, ValueError):
    """A dataset folder or image set is missing, empty or unusable."""


class TrainingStopped(LikenessError):
    """Raised by front ends that want an exception when the stop flag ended a run early."""


class OutOfMemory(LikenessError):
    """The GPU ran out of memory; the message says what to change."""


class TrainingDiverged(LikenessError):
    """The loss (or the gradients) stopped being finite numbers; nothing broken was saved."""


class SaveFailed(LikenessError):
    """The finished result could not be written (a full disk, no permission); the message says where the trained
    weights were kept and what to free."""


class OutputExists(ConfigError):
    """The file to write exists already (and replacing it was not asked for)."""


class IdentityUnavailable(LikenessError):
    """The face-identity backend (dlib + its model files) is not installed; the message says what to install."""
