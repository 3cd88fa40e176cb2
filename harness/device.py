"""Where a process computes: the device Ray reserved for it, and how CUDA is set up there.

A device follows what the process asked for and was given, never mere visibility: on a GPU node a Ray worker that
reserved no GPU may still see every one (recent Ray leaves CUDA_VISIBLE_DEVICES alone for it), and a CPU trial that
took `cuda:0` would share a device Ray lent to others and run at another precision than its cell's other trials.

On CUDA a process also gets (`prepare_device`): deterministic algorithms (the index-add backwards of embedding
lookups and row selections otherwise add in a different order on every run), the cuBLAS workspace setting that
deterministic matmuls need, and, for a fractional share of a GPU, a cap on the memory its allocator may take, so
workers sharing a GPU cannot starve one another. CPU processes are left exactly as they were.
"""

from __future__ import annotations

import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

# cuBLAS reduces in a fixed order only with a fixed workspace (NVIDIA's documented setting for reproducibility); it
# must be set before the process's first cuBLAS call, which `prepare_device` precedes.
CUBLAS_WORKSPACE = ":4096:8"


def assigned_device(requested_gpus: float, *, cuda_available: bool | None = None) -> torch.device:
    """The device of a process that asked for `requested_gpus` GPUs: CUDA only when it asked for a share, was given
    one (inside a Ray worker: `ray.get_gpu_ids()` is not empty) and CUDA works here; else the CPU.

    Ray makes the GPUs it assigned the only visible ones (CUDA_VISIBLE_DEVICES), so the device is always index 0.
    `cuda_available` defaults to `torch.cuda.is_available()`; tests pass it.
    """
    if requested_gpus <= 0:
        return torch.device("cpu")
    import ray

    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE and not ray.get_gpu_ids():
        return torch.device("cpu")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    return torch.device("cuda", 0) if available else torch.device("cpu")


def prepare_device(device: torch.device, gpu_share: float) -> None:
    """Set up this process for computing on `device` with `gpu_share` of a GPU (a no-op on the CPU)."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    # warn_only: an op with no deterministic CUDA kernel warns instead of failing the trial.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if 0 < gpu_share < 1:
        torch.cuda.set_per_process_memory_fraction(gpu_share, device)


def attention_for(device: torch.device, double_backward: bool) -> str:
    """The attention implementation of encoders built for `device`: eager where second-order gradients go through
    the encoder (SDPA has no double backward) and on the CPU (every result so far was computed with it), SDPA on
    CUDA otherwise."""
    return "sdpa" if device.type == "cuda" and not double_backward else "eager"


def hardware(device: torch.device | None = None) -> str:
    """What a device is, as provenance records it: the GPU's name, or this machine's CPU."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} x{os.cpu_count()}"
