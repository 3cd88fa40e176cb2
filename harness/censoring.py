"""Building blocks for defenses that train on a desired task while censoring a harmful one.

`mlac`, `adversarial`, `repnoise` and `sophon` share them, so a batch, a simulated attacker or a censoring loss means
the same thing in every defense that uses one:

- `Batch` / `make_batch`: rows of a tokenised split with one label column, on a device;
- `draw_head`: a fresh harmful head, distributed as the evaluation attacker's (`Classifier.reset_head`);
- `sample_setting`: one simulated attacker (`AttackSetting`) drawn from a defense's options;
- `functional_forward`: a classifier's features and logits with substituted parameters (differentiable inner loops);
- `clip_by_global_norm`: `torch.nn.utils.clip_grad_norm_` as a pure, differentiable function;
- censoring losses on a harmful head's logits: `kl_to_uniform` and `capped_neg_ce`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from harness.attack_step import Adapt, AttackSetting, OptimizerName
from harness.classifier import Classifier, mean_pool
from harness.tokenized import TokenizedSplit

T = TypeVar("T")


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def make_batch(split: TokenizedSplit, index: torch.Tensor, label: str, device: torch.device) -> Batch:
    rows = index.numpy()
    ids, mask = split.batch(rows)
    labels = torch.from_numpy(split.labels[label][rows])
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def draw_head(
    in_features: int, num_labels: int, generator: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """A fresh head, distributed as `Classifier.reset_head` draws the evaluation attacker's."""
    bound = 1.0 / in_features**0.5
    weight = (torch.rand(num_labels, in_features, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(num_labels, generator=generator) * 2 - 1) * bound
    return {"head.weight": weight.to(device), "head.bias": bias.to(device)}


def choose(options: Sequence[T], generator: torch.Generator) -> T:
    return options[int(torch.randint(len(options), (), generator=generator))]


def sample_setting(
    generator: torch.Generator,
    *,
    lr: float,
    steps: int,
    batch_sizes: Sequence[int],
    pool: int,
    adapts: Sequence[Adapt],
    top_k: int,
    optimizers: Sequence[OptimizerName],
) -> AttackSetting:
    """One simulated attacker: batch size (capped at the `pool` rows available), what adapts and the optimizer.

    No weight decay and a constant schedule, like the attackers the evaluation searches most often. The draws are
    made in a fixed order, so a seeded generator gives the same attacker every time.
    """
    batch_size = min(choose(batch_sizes, generator), pool)
    adapt = choose(adapts, generator)
    optimizer = choose(optimizers, generator)
    return AttackSetting(lr=lr, steps=steps, batch_size=batch_size, adapt=adapt, top_k=top_k, optimizer=optimizer)


def functional_forward(
    clf: Classifier, params: dict[str, torch.Tensor], batch: Batch, input_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features, logits) of the classifier with these parameters (missing ones: the module's own)."""
    encoder_params = {name[8:]: t for name, t in params.items() if name.startswith("encoder.")}
    ids = batch.input_ids if input_ids is None else input_ids
    hidden = functional_call(
        clf.encoder, encoder_params, (), {"input_ids": ids, "attention_mask": batch.attention_mask}
    ).last_hidden_state
    features = mean_pool(hidden, batch.attention_mask) if clf.pooling == "mean" else hidden[:, 0]
    return features, F.linear(features, params["head.weight"], params["head.bias"])


def clip_by_global_norm(grads: Sequence[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """torch.nn.utils.clip_grad_norm_ as a pure, differentiable function."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if float(norm.detach()) + 1e-6 <= max_norm:
        # Not clipping: the clamped scale is the constant 1 (zero derivative), so skipping it changes neither the
        # values nor the meta-gradient, and saves a multiply per tensor (and its backward) per inner step.
        return list(grads)
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return [g * scale for g in grads]


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(uniform || softmax(logits)) = -log C - mean_c log p_c: zero exactly at uniform predictions.

    Unlike a raised cross-entropy it rewards no confidently *wrong* predictions, which on a binary task are as
    informative to an attacker as right ones.
    """
    return (-math.log(logits.shape[-1]) - F.log_softmax(logits, -1).mean(-1)).mean()


def capped_neg_ce(logits: torch.Tensor, labels: torch.Tensor, cap: float) -> torch.Tensor:
    """Negated per-example cross-entropy, each clamped at `cap * log C`: gradient ascent that cannot blow up."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return -ce.clamp(max=cap * math.log(logits.shape[-1])).mean()
