"""The definition of one attack step, shared by the attack plugins and MLAC's simulated inner loop.

An attack fine-tunes some of a model's parameters on harmful-task batches. What adapts (`adapt`), the optimizer and
its learning-rate schedule are described by an `AttackSetting`, and the update has two implementations held to the
same maths by tests/test_attack_step.py:

* `torch_optimizer`: the in-place torch optimizer a real attack runs (fused kernels: a full MiniLM update takes
  20 ms on a 2-core CPU, against 470 ms for the pure-function form), and
* `optimizer_update`: the same update as a pure function of tensors, for the inner loops of MLAC and its peers, where
  the outer loss is differentiated through K such updates (a learned learning rate can be passed as a tensor).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

# What MLAC's simulated attacker can adapt (defenses sample from these).
Adapt = Literal["full", "probe", "top-k"]
# What a real attack can adapt: also "lora", the low-rank adapters a LoRA attack injects into the model
# (attacks/lora.py). MLAC does not simulate LoRA attacks, so its parameters keep the narrower `Adapt`.
AttackAdapt = Literal["full", "probe", "top-k", "lora"]
OptimizerName = Literal["adamw", "adam", "sgd"]

_LAYER = re.compile(r"^encoder\.encoder\.layer\.(\d+)\.")
BETAS = (0.9, 0.999)
EPS = 1e-8


class AttackSetting(BaseModel):
    """One attacker's hyperparameters: what adapts, how, for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(gt=0)
    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    adapt: AttackAdapt = "full"
    top_k: int = Field(1, ge=1, description="with adapt=top-k: how many of the last encoder layers adapt")
    optimizer: OptimizerName = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    warmup_frac: float = Field(0.0, ge=0, le=1)
    schedule: Literal["constant", "linear"] = "constant"


def adapted_parameter_names(names: Sequence[str], adapt: AttackAdapt, top_k: int = 1) -> list[str]:
    """Which of a Classifier's parameters an attack of this kind updates (the head always does)."""
    if adapt == "full":
        return [n for n in names if not n.startswith("encoder.pooler.")]  # the pooler is unused by our heads
    head = [n for n in names if n.startswith("head.")]
    if adapt == "probe":
        return head
    if adapt == "lora":
        adapters = [n for n in names if ".lora_" in n]
        if not adapters:
            raise ValueError("adapt='lora' but the model has no LoRA adapters (attacks/lora.py injects them)")
        return adapters + head
    layers = sorted({int(m.group(1)) for n in names if (m := _LAYER.match(n))})
    keep = {str(i) for i in layers[-top_k:]}
    return [n for n in names if (m := _LAYER.match(n)) and m.group(1) in keep] + head


def lr_at(setting: AttackSetting, step: int) -> float:
    """Learning-rate multiplier schedule: linear warmup, then constant or linear decay to zero."""
    warmup = int(setting.warmup_frac * setting.steps)
    if step < warmup:
        return (step + 1) / warmup
    if setting.schedule == "linear":
        remaining = setting.steps - warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, remaining))
    return 1.0


@dataclass
class OptimizerState:
    step: int
    first: list[torch.Tensor]  # Adam first moment, or SGD momentum buffer
    second: list[torch.Tensor]  # Adam second moment (empty for SGD)


def init_optimizer_state(params: Sequence[torch.Tensor], optimizer: OptimizerName) -> OptimizerState:
    zeros = [torch.zeros_like(p, memory_format=torch.preserve_format).detach() for p in params]
    second = [] if optimizer == "sgd" else [torch.zeros_like(p).detach() for p in params]
    return OptimizerState(0, zeros, second)


def torch_optimizer(params: Sequence[torch.Tensor], setting: AttackSetting) -> torch.optim.Optimizer:
    """The torch optimizer that applies `setting`'s update in place; set its lr each step from `lr_at`."""
    device_types = {p.device.type for p in params}
    options = {"lr": setting.lr, "weight_decay": setting.weight_decay,
               "fused": device_types <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)}
    if setting.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=setting.momentum, **options)
    adam = torch.optim.AdamW if setting.optimizer == "adamw" else torch.optim.Adam
    return adam(params, betas=BETAS, eps=EPS, **options)


def optimizer_update(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: OptimizerState,
    setting: AttackSetting,
    lr: float | torch.Tensor,
) -> tuple[list[torch.Tensor], OptimizerState]:
    """One optimizer update as a pure function: new parameters and state, inputs untouched.

    Adam's denominator is sqrt(v_hat + eps^2) rather than sqrt(v_hat) + eps: the same to within eps, and it has a
    finite derivative at v = 0, which second-order MLAC needs when a gradient entry is exactly zero.
    """
    t = state.step + 1
    new_params: list[torch.Tensor] = []
    if setting.optimizer == "sgd":
        new_first = []
        for p, g, buf in zip(params, grads, state.first):
            if setting.weight_decay:
                g = g + setting.weight_decay * p
            buf = setting.momentum * buf + g
            new_first.append(buf)
            new_params.append(p - lr * buf)
        return new_params, OptimizerState(t, new_first, [])
    b1, b2 = BETAS
    bias1 = 1 - b1**t
    bias2 = 1 - b2**t
    new_first, new_second = [], []
    for p, g, m, v in zip(params, grads, state.first, state.second):
        if setting.optimizer == "adam" and setting.weight_decay:
            g = g + setting.weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = (m / bias1) / torch.sqrt(v / bias2 + EPS * EPS)
        if setting.optimizer == "adamw" and setting.weight_decay:
            update = update + setting.weight_decay * p
        new_params.append(p - lr * update)
        new_first.append(m)
        new_second.append(v)
    return new_params, OptimizerState(t, new_first, new_second)


def sample_batch(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Row indices of one training batch (with replacement across steps, without within a batch when possible): a
    random permutation of the rows, cut to `batch_size` (all of them when there are fewer)."""
    return torch.randperm(n, generator=generator)[:batch_size]

