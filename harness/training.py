"""The training loop every attack and the `bert` defense run: shared attack steps, evaluation, early stopping."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from harness.attack_step import (
    AttackSetting,
    adapted_parameter_names,
    lr_at,
    sample_batch,
    torch_optimizer,
)
from harness.classifier import Classifier
from harness.tokenized import TokenizedSplit

log = logging.getLogger(__name__)

EVAL_BATCH = 128


class NonFiniteLoss(RuntimeError):
    """A trial's loss became NaN or infinite: the trial failed, its numbers must not be used."""


@dataclass(frozen=True)
class Features:
    """Frozen-encoder features of a cell's splits, computed once so linear probes train in milliseconds."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None


@dataclass
class FitResult:
    val_accuracy: float | None
    best_step: int
    steps_run: int
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation accuracy) at each check
    test_history: list[tuple[int, float]] = field(default_factory=list)  # (step, test accuracy) at the same checks


Precision = Literal["auto", "bf16", "fp32"]  # what a config asks for
Resolved = Literal["bf16", "fp32"]  # what runs
# CPU flags (as /proc/cpuinfo spells them) of native bf16 arithmetic: AVX512-BF16 dot products or AMX tiles. Without
# them oneDNN emulates bf16 matmuls, slower than float32, so `auto` keeps float32 there.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(
    requested: Precision | str,
    device: torch.device | str,
    *,
    flags: Iterable[str] | None = None,
    cuda_bf16: bool | None = None,
) -> Resolved:
    """The precision a model runs at on `device`: `auto` is bf16 where the device computes bf16 natively (a CPU with
    AVX512-BF16 or AMX, a CUDA device that supports bf16), else fp32; `fp32` is taken as it is, and so is `bf16`
    except on a CUDA device without bf16 (before Ampere), which runs fp32 (the rows record what ran).

    bf16 means autocast around forward passes (matmuls in bf16, master weights, gradients, losses and optimizer
    states in float32). `flags` (CPU flags) and `cuda_bf16` default to this machine's; tests pass them.
    """
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision {requested!r}: expected auto, bf16 or fp32")
    if requested == "fp32":
        return "fp32"
    kind = torch.device(device).type
    if kind == "cuda":
        # Native bf16 only: emulated bf16 is slower than float32.
        supported = torch.cuda.is_bf16_supported(including_emulation=False) if cuda_bf16 is None else cuda_bf16
        return "bf16" if supported else "fp32"
    if requested == "bf16":
        return "bf16"
    if kind == "cpu":
        have = cpu_flags() if flags is None else frozenset(flags)
        return "bf16" if have & BF16_CPU_FLAGS else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: Resolved | str = "fp32"):
    """The autocast region of a forward pass at `precision` (a no-op at fp32).

    Keep it around forward passes only: losses are computed from `.float()` outputs and backward runs outside it.
    A region must not span an in-place update of the weights it has cast (its weight cast cache would go stale).
    """
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def upcast(t: torch.Tensor) -> torch.Tensor:
    """An autocast region's output in float32 for the losses (float32 and float64 tensors pass through as they are)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def model_precision(model: torch.nn.Module) -> Resolved:
    """The precision a model was built to run at (`Classifier.precision`; fp32 for anything else)."""
    return getattr(model, "precision", "fp32")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def encode(model: Classifier, split: TokenizedSplit, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Pooled encoder features for every row of a split, in row order (length-sorted batches inside)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = torch.empty(len(split), model.head.in_features)
    for index in split.eval_batches(batch_size):
        ids, mask = split.batch(index)
        with autocast(device, model_precision(model)):
            feats = model.features(ids.to(device), mask.to(device))
        out[torch.from_numpy(index)] = feats.float().cpu()
    model.train(was_training)
    return out


@torch.inference_mode()
def accuracy(model: Classifier, split: TokenizedSplit, label: str, batch_size: int = EVAL_BATCH) -> float:
    device = model_device(model)
    was_training = model.training
    model.eval()
    correct = 0
    labels = split.labels[label]
    for index in split.eval_batches(batch_size):
        ids, mask = split.batch(index)
        with autocast(device, model_precision(model)):
            logits = model(ids.to(device), mask.to(device))
        correct += int((logits.argmax(-1).cpu().numpy() == labels[index]).sum())
    model.train(was_training)
    return correct / max(1, len(split))


@torch.inference_mode()
def probe_accuracy(head: torch.nn.Linear, features: torch.Tensor, labels: np.ndarray) -> float:
    device = head.weight.device
    predictions = head(features.to(device)).argmax(-1).cpu().numpy()
    return float((predictions == labels).mean()) if len(labels) else 0.0


def fit(
    model: Classifier,
    train: TokenizedSplit,
    label: str,
    setting: AttackSetting,
    *,
    seed: int,
    val: TokenizedSplit | None = None,
    eval_every: int = 0,
    patience: int = 3,
    features: Features | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    test_accuracy: Callable[[], float] | None = None,
) -> FitResult:
    """Fine-tune `model` in place on `train[label]` with the shared attack step.

    With `eval_every` > 0 and a validation split, accuracy is checked every `eval_every` steps, training stops after
    `patience` checks without improvement, and the best checkpoint's adapted weights are restored. With `features`
    and `adapt="probe"`, the frozen encoder is skipped altogether and only the head trains on the cached features.
    `history` keeps every check's (step, validation accuracy); with `test_accuracy` (a rerun's scorer: never for a
    search trial, whose selection must not see test), `test_history` has the test accuracy at the same checks.
    Forward passes run at the model's precision (`Classifier.precision`: under bf16 autocast when "bf16"); the loss,
    gradients, weights and optimizer stay float32.
    """
    device = model_device(model)
    precision = model_precision(model)
    generator = torch.Generator().manual_seed(seed)
    names = adapted_parameter_names([n for n, _ in model.named_parameters()], setting.adapt, setting.top_k)
    lookup = dict(model.named_parameters())
    params = [lookup[n] for n in names]
    adapted = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in adapted)
    labels = torch.as_tensor(np.array(train.labels[label]))  # object-store arrays are read-only
    use_features = features is not None and setting.adapt == "probe"
    # Dropout off: with budgets of 20-200 examples its noise would blur the comparison between trials.
    model.eval()

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        target = labels[index].to(device)
        if use_features:
            logits = model.head(features.train[index].to(device))
        else:
            ids, mask = train.batch(index.numpy())
            with autocast(device, precision):
                logits = model(ids.to(device), mask.to(device))
        return torch.nn.functional.cross_entropy(logits.float(), target)

    def val_accuracy() -> float:
        assert val is not None
        if use_features:
            return probe_accuracy(model.head, features.val, val.labels[label])
        return accuracy(model, val, label)

    optimizer = torch_optimizer(params, setting)
    try:
        history: list[tuple[int, float]] = []
        test_history: list[tuple[int, float]] = []
        best_acc, best_step, best_weights, stale = -1.0, 0, None, 0
        steps_run = 0
        for step in range(setting.steps):
            loss = batch_loss(sample_batch(len(train), setting.batch_size, generator))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLoss(f"loss is {value} at step {step} (lr {setting.lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = setting.lr * lr_at(setting, step)
            optimizer.step()
            steps_run = step + 1
            if on_step is not None:
                on_step(steps_run, value)
            if eval_every and val is not None and (steps_run % eval_every == 0 or steps_run == setting.steps):
                acc = val_accuracy()
                history.append((steps_run, acc))
                if test_accuracy is not None:
                    test_history.append((steps_run, test_accuracy()))
                if on_eval is not None:
                    on_eval(steps_run, acc)
                if acc > best_acc:
                    best_acc, best_step, stale = acc, steps_run, 0
                    best_weights = [p.detach().clone() for p in params]
                else:
                    stale += 1
                    if stale >= patience:
                        break
        if best_weights is not None:
            with torch.no_grad():
                for p, q in zip(params, best_weights):
                    p.copy_(q)
            return FitResult(best_acc, best_step, steps_run, history, test_history)
        final = val_accuracy() if val is not None else None
        if final is not None:
            history.append((steps_run, final))
            if test_accuracy is not None:
                test_history.append((steps_run, test_accuracy()))
        return FitResult(final, steps_run, steps_run, history, test_history)
    finally:
        # A worker keeps its model for the cell's later trials: the last step's gradients (a full fine-tune's are
        # the size of the model) must not stay with it, e.g. through later probe trials that never touch them.
        for p in model.parameters():
            p.grad = None
