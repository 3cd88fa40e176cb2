"""Resumable defense training: a trainer's whole state goes through `DefenseContext.checkpoint` every few steps, and an
interrupted training continues from the last checkpoint to the very weights an uninterrupted one reaches.

A defense with a long training loop writes a small trainer class (`Resumable`: one step, its state as tensors, how to
load that state back, the defended encoder) and hands it to `train_resumable`. Most subclass `CheckpointedTrainer`,
which needs only the step and a dict naming what to checkpoint (modules, optimizers, tensors, random generators):
each part is stored under its name (`model/encoder...`, `opt/0/exp_avg`, `rng`) and loaded back by the same name.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol, Union

import torch
from pydantic import BaseModel

from harness.plugins import DefenseContext

log = logging.getLogger(__name__)


class Resumable(Protocol):
    step_count: int  # steps done so far

    def step(self) -> dict[str, float]:
        """One training step; its running metrics (all finite)."""
        ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a continuation needs (weights, optimizer states, random generators) and JSON metadata."""
        ...

    def load(self, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None: ...

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The defended encoder's state dict."""
        ...


# What a checkpoint holds: a module's state dict, an optimizer's state, a tensor (e.g. a learned scalar) or a random
# generator's state.
Part = Union[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Generator]


class CheckpointedTrainer:
    """A `Resumable` whose checkpoint is the named `parts()`, with the run's params as metadata.

    Subclasses set `p` (the defense's params) and `model` (a `Classifier`: its encoder is the defended one), and
    implement `step` and `parts`; `metadata` / `check_metadata` add to what the checkpoint records and checks.
    """

    p: BaseModel
    model: Any
    step_count: int = 0

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    def parts(self) -> dict[str, Part]:
        """Everything a continuation needs, by checkpoint name."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        return {}

    def check_metadata(self, metadata: dict[str, Any]) -> None:
        """Raise when a checkpoint's metadata says this trainer cannot continue it."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for name, part in self.parts().items():
            tensors.update(part_tensors(name, part))
        return tensors, {**params_metadata(self.p), **self.metadata()}

    def load(self, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        check_params(metadata, self.p)
        self.check_metadata(metadata)
        for name, part in self.parts().items():
            load_part(name, part, tensors)
        self.step_count = step

    def encoder_state(self) -> dict[str, torch.Tensor]:
        return self.model.encoder.state_dict()


def part_tensors(name: str, part: Part) -> dict[str, torch.Tensor]:
    """One checkpoint part as named tensors: `name/key` for a module, `name/index/key` for an optimizer."""
    if isinstance(part, torch.nn.Module):
        return {f"{name}/{k}": v.detach().clone() for k, v in part.state_dict().items()}
    if isinstance(part, torch.optim.Optimizer):
        return optimizer_tensors(part, name)
    if isinstance(part, torch.Generator):
        return {name: part.get_state()}
    return {name: part.detach().clone()}


def load_part(name: str, part: Part, tensors: dict[str, torch.Tensor]) -> None:
    if isinstance(part, torch.nn.Module):
        part.load_state_dict(tensors_with_prefix(tensors, f"{name}/"))
    elif isinstance(part, torch.optim.Optimizer):
        load_optimizer_tensors(part, tensors, name)
    elif isinstance(part, torch.Generator):
        part.set_state(tensors[name])
    else:
        with torch.no_grad():
            part.copy_(tensors[name])


def train_resumable(trainer: Resumable, steps: int, ctx: DefenseContext, name: str) -> dict[str, torch.Tensor]:
    """Run (or resume) `trainer` to `steps`, checkpointing every `ctx.checkpoint.every` steps and at the end."""
    saved = ctx.checkpoint.load()
    if saved is not None:
        trainer.load(*saved)
        log.info("%s: resuming from the checkpoint at step %d of %d", name, trainer.step_count, steps)
    while trainer.step_count < steps:
        metrics = trainer.step()
        step = trainer.step_count
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"{name}: non-finite metrics at step {step}: {metrics}")
        if step % ctx.checkpoint.every == 0 or step == steps:
            ctx.checkpoint.save(step, *trainer.state())
        ctx.progress(step, metrics)
    return {k: v.detach().clone() for k, v in trainer.encoder_state().items()}


def params_metadata(params: BaseModel) -> dict[str, Any]:
    return {"params": params.model_dump(mode="json")}


def check_params(metadata: dict[str, Any], params: BaseModel) -> None:
    """Refuse a checkpoint written with other parameters (a longer run, `steps`, may continue a shorter one)."""
    saved = {k: v for k, v in metadata.get("params", {}).items() if k != "steps"}
    ours = {k: v for k, v in params.model_dump(mode="json").items() if k != "steps"}
    if saved != ours:
        raise ValueError(f"checkpoint was written with other parameters: {saved} != {ours}")


def tensors_with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint tensors named `prefix...` (e.g. "model/"), with the prefix removed: a state dict to load."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat named tensors (`prefix/index/key`), for a checkpoint."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}/{index}/{key}"] = value.clone() if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    saved = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "/"):
            _, index, key = name.split("/")
            state.setdefault(int(index), {})[key] = value
    saved["state"] = state
    optimizer.load_state_dict(saved)
