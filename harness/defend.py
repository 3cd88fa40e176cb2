"""Defense training service: train each defense once per configuration, cache the defended encoder as safetensors.

The cache is content-addressed: the key hashes the defense's name and parameters, the base model's config and
weights fingerprint, the training data's fingerprint and the seed, so `sdm run` never trains the same defense twice
and a changed ingredient never reuses stale weights. Training runs as a Ray task with the resources the config asks
for (`defense_task`), checkpoints periodically and resumes from the last checkpoint after an interruption.

The task resolves the cache on its own node (`cache_root`: shared by every node when it lies beside a shared
`cluster.storage_path`, else that node's own) and returns the weights themselves through Ray's object store, so a
driver on another node gets them without reading a file it may not have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from harness.atomic import publish_dir_atomic, write_file_atomic, write_text_atomic
from harness.config import DefenseSpec, ExperimentConfig
from harness.device import assigned_device, attention_for, prepare_device
from harness.models import base_fingerprint, model_id, state_fingerprint
from harness.plugins import Checkpointer, Defense, DefenseContext
from harness.registry import DEFENSES
from harness.tokenized import TokenizedSplit
from harness.training import resolve_precision

log = logging.getLogger(__name__)

WEIGHTS_FILE = "encoder.safetensors"
META_FILE = "defense.json"


def cache_root(cfg: ExperimentConfig) -> Path:
    """SDM_CACHE_DIR, else beside a local shared storage_path (so cluster nodes share it), else the user cache."""
    if os.environ.get("SDM_CACHE_DIR"):
        return Path(os.environ["SDM_CACHE_DIR"]).expanduser()
    storage = cfg.cluster.storage_path
    if storage and "://" not in storage:
        return Path(storage).expanduser() / "sdm-cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdm-bench"


@dataclass(frozen=True)
class DefendedWeights:
    defense: str
    path: Path  # the safetensors file
    fingerprint: str  # of the defended weights
    cached: bool  # found in the cache rather than trained now
    train_seconds: float


def make_defense(spec: DefenseSpec, origin: str) -> Defense:
    return DEFENSES.get(spec.name).from_params(spec.params, origin)


def training_device(cfg: ExperimentConfig) -> torch.device:
    """The device a defense trains on in this process: the GPU Ray assigned it (or, outside Ray, the GPU it asks
    for in `defense_training.resources`), else the CPU."""
    return assigned_device(cfg.defense_training.resources.gpu)


def defense_key(
    cfg: ExperimentConfig, spec: DefenseSpec, data_fingerprint: str, seed: int, device: torch.device | None = None
) -> str:
    """The weights-cache key. The kind of `device` (default: the one this process trains on) and the precision the
    training resolves to there enter it only when they are not the CPU and fp32, so CPU float32 trainings keep the
    keys (and cached weights) they had before either existed."""
    defense = make_defense(spec, "config")
    device = device or training_device(cfg)
    precision = resolve_precision(cfg.model.precision, device)
    payload = {
        "defense": spec.name,
        "params": defense.params.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json", exclude={"precision"}),
        "base": base_fingerprint(cfg.model),
        "data": data_fingerprint,
        "tasks": [cfg.tasks.harmful, cfg.tasks.desired],
        "seed": seed,
    }
    if defense.training_revision():
        payload["revision"] = defense.training_revision()
    if precision != "fp32":
        payload["precision"] = precision
    if device.type != "cpu":
        payload["device"] = device.type
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class FileCheckpointer(Checkpointer):
    """Checkpoints as safetensors + JSON in a work folder, each written atomically."""

    def __init__(self, folder: Path, every: int):
        self.folder = folder
        self.every = every
        self.resumed_from: int | None = None  # the step of the checkpoint a training continued from

    def load(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        meta_path = self.folder / "checkpoint.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(self.folder / meta["tensors"]))
        self.resumed_from = int(meta["step"])
        return self.resumed_from, tensors, meta.get("metadata", {})

    def save(self, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"checkpoint-{step}.safetensors"
        write_file_atomic(self.folder / name, lambda tmp: save_file(_contiguous(tensors), str(tmp)))
        previous = self.folder / "checkpoint.json"
        old = json.loads(previous.read_text())["tensors"] if previous.exists() else None
        # The JSON pointer is renamed into place last: a kill between the two writes leaves the old checkpoint valid.
        write_text_atomic(previous, json.dumps({"step": step, "tensors": name, "metadata": metadata}))
        if old and old != name:
            (self.folder / old).unlink(missing_ok=True)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def train_defense(
    cfg: ExperimentConfig, spec: DefenseSpec, train: TokenizedSplit, data_fingerprint: str, seed: int,
    progress: Callable[[int, dict[str, float]], None] | None = None, cache: Path | None = None,
) -> DefendedWeights:
    """Find the defended weights in the cache (`cache`, by default this process's `cache_root`) or train them now,
    in this process.

    `progress`: called with (step, running metrics) as the training goes, to move the caller's progress display (a
    Ray task draws no bar of its own: `harness.progress`).
    """
    resources = cfg.defense_training.resources
    device = training_device(cfg)
    prepare_device(device, resources.gpu)
    key = defense_key(cfg, spec, data_fingerprint, seed, device)
    root = (cache_root(cfg) if cache is None else cache) / "defenses"
    final = root / f"{spec.name}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{spec.name}-{key}.lock")):
        if (final / WEIGHTS_FILE).exists():
            meta = json.loads((final / META_FILE).read_text())
            return DefendedWeights(spec.name, final / WEIGHTS_FILE, meta["weights_fingerprint"], True, 0.0)
        defense = make_defense(spec, "config")
        work = root / ".work" / f"{spec.name}-{key}"
        checkpointer = FileCheckpointer(work, cfg.defense_training.checkpoint_every)
        ctx = DefenseContext(
            model=cfg.model,
            train=train,
            harmful=cfg.tasks.harmful,
            desired=cfg.tasks.desired,
            num_labels=dict(cfg.data.labels),
            seed=seed,
            device=device,
            progress=progress or (lambda step, metrics: None),
            checkpoint=checkpointer,
            attention=attention_for(device, defense.needs_double_backward()),
        )
        torch.manual_seed(seed)
        started = time.perf_counter()
        state = defense.train(ctx)
        seconds = time.perf_counter() - started
        state = _contiguous(state)
        fingerprint = state_fingerprint(state)
        meta = {
            "defense": spec.name,
            "params": defense.params.model_dump(mode="json"),
            "model_id": model_id(cfg.model),
            "base_fingerprint": base_fingerprint(cfg.model),
            "data_fingerprint": data_fingerprint,
            "seed": seed,
            "weights_fingerprint": fingerprint,
            "train_seconds": round(seconds, 3),
            "resumed_from_step": checkpointer.resumed_from,  # set when an interrupted training was continued
            "device": str(device),
            "precision": ctx.precision,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

        def fill(folder: Path) -> None:
            save_file(state, str(folder / WEIGHTS_FILE), metadata={"defense": spec.name, "key": key})
            (folder / META_FILE).write_text(json.dumps(meta, indent=2))

        publish_dir_atomic(final, fill)
        shutil.rmtree(work, ignore_errors=True)
        log.info("trained defense %s in %.1fs -> %s", spec.name, seconds, final)
        return DefendedWeights(spec.name, final / WEIGHTS_FILE, fingerprint, False, seconds)


def load_defended(weights: DefendedWeights) -> dict[str, torch.Tensor]:
    return load_file(str(weights.path))


def defense_task(
    cfg: ExperimentConfig, spec: DefenseSpec, train: TokenizedSplit, data_fingerprint: str, seed: int,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[DefendedWeights, dict[str, torch.Tensor]]:
    """`train_defense` as a Ray task runs it (`harness.resources.task_options`, two returns): what the cache holds,
    and the weights themselves, read back on the task's own node."""
    begin = getattr(progress, "begin", None)  # `harness.progress.BoardReporter`'s
    if begin is not None:
        begin()  # it holds its resources now: the run's trial workers may take what is left (`harness.trainings`)
    weights = train_defense(cfg, spec, train, data_fingerprint, seed, progress)
    return weights, load_defended(weights)
