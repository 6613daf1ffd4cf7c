"""Several processes (``accelerate launch`` / ``torchrun``): which process this is, and the few collectives the engine
needs outside the training loop (a barrier, a sum).

A launcher tells each process its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one
process reads nothing and is process 0 of 1. Files that belong to a whole run (results, sidecars, resumable states,
manifests) are written by the main process only; every process reads them, so several machines need a shared folder.

accelerate's CPU launcher starts several processes only through MPI (``--mpirun_hostfile``): without it,
``accelerate launch --cpu --num_processes 2`` starts *one* process with the rendezvous variables set. That run would
silently train with half the global batch, so :func:`check_launch` refuses it and names the commands that work; it
refuses FSDP and DeepSpeed launches too (the loop is data parallel: every process holds the whole model).

The process group is made by accelerate (gloo on the CPU, NCCL on GPUs) the first time a collective is needed;
torch is imported inside the functions.
"""

from __future__ import annotations

import os

from .errors import ConfigError

_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return default


def world_size() -> int:
    """How many processes train together (1 without a launcher)."""
    return max(1, _env_int(_WORLD_VARS, 1))


def rank() -> int:
    """This process's index among them (0 is the main process)."""
    return _env_int(_RANK_VARS, 0) if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def check_launch() -> None:
    """Refuse a launch that asked for several CPU processes but started one (see the module docstring)."""
    for name, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(name, "").lower() in ("1", "true", "yes"):
            raise ConfigError(
                f"this accelerate config uses {what}; Likeness trains data-parallel (DDP: one whole SD1.5 per GPU, "
                "which fits with the memory options). Choose 'multi-GPU' without FSDP/DeepSpeed in accelerate config"
            )
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    rendezvous = bool(os.environ.get("MASTER_ADDR"))
    if asked_cpu and rendezvous and world_size() == 1:
        raise ConfigError(
            "accelerate launch --cpu --num_processes N started only one process (its CPU launcher needs MPI, "
            "--mpirun_hostfile): this run would train with 1/N of the global batch. For N processes on the CPU use "
            "'accelerate launch --multi_gpu --num_processes N -m trainers ... device=cpu' or "
            "'torchrun --nproc_per_node N -m trainers ... device=cpu'; for one process leave --num_processes out"
        )


def local_device(device_type: str) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` when several processes share a machine's GPUs."""
    if device_type == "cuda" and world_size() > 1:
        return f"cuda:{_env_int(('LOCAL_RANK', 'MPI_LOCALRANKID', 'OMPI_COMM_WORLD_LOCAL_RANK'), 0)}"
    return device_type


def _state(device: str = "auto"):
    """accelerate's process state (it makes the process group once: gloo on the CPU, NCCL on CUDA)."""
    from accelerate import PartialState

    from .devices import resolve_device

    return PartialState(cpu=resolve_device(device) == "cpu")


def barrier(device: str = "auto") -> None:
    """Wait until every process gets here (nothing to do in one process). ``device`` is the run's device option."""
    if world_size() > 1:
        _state(device).wait_for_everyone()


def sum_ints(values: list[int], device: str = "auto") -> list[int]:
    """Element-wise sums of ``values`` over all processes (the values themselves in one process)."""
    if world_size() == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    state = _state(device)
    t = torch.tensor(values, dtype=torch.int64, device=state.device)
    dist.all_reduce(t)
    return [int(x) for x in t.tolist()]
