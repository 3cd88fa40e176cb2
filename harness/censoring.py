"""Building blocks for defenses that train on a desired task while censoring a harmful one.

`bert`, `adversarial`, `mlac`, `repnoise` and `sophon` share them, so a batch, a head, a simulated attacker or a
censoring loss means the same thing in every defense that uses one:

- `OuterParams`: the outer optimisation (steps, Adam learning rate, batch size, gradient clip) of `bert`,
  `adversarial`, `mlac` and `repnoise`, one definition with the same defaults;
- `Batch` / `make_batch`: rows of a tokenised split with one label column, on a device;
- `draw_head` / `init_head`: a fresh head, distributed as the evaluation attacker's (`Classifier.reset_head`), as
  tensors or copied into a module's head;
- `SimulatedAttacker`: the parameters of the attackers a defense simulates (steps, learning rates, batch sizes,
  optimizers, what adapts, gradient clip), shared by `mlac` and `sophon`, and the draw of one of them
  (`sample_setting`, an `AttackSetting`);
- `functional_forward`: a classifier's features and logits with substituted parameters (differentiable inner loops);
- `clip_by_global_norm`: `torch.nn.utils.clip_grad_norm_` as a pure, differentiable function;
- censoring losses: `kl_to_uniform` and `capped_neg_ce` on a harmful head's logits, `ridge_probe_score` on features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.func import functional_call

from harness.attack_step import Adapt, AttackSetting, OptimizerName
from harness.classifier import Classifier, mean_pool
from harness.tokenized import TokenizedSplit

T = TypeVar("T")


class OuterParams(BaseModel):
    """The outer optimisation: Adam on the encoder and the desired head, clipped by global norm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(1000, ge=0, description="outer training steps (the reference ran 50k)")
    lr: float = Field(1e-5, gt=0, description="outer Adam learning rate (encoder and desired head)")
    batch_size: int = Field(20, gt=1, description="rows per step: the desired batch (and the harmful one)")
    grad_clip: float = Field(10.0, gt=0, description="outer gradient clip (global norm)")


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


def init_head(head: torch.nn.Linear, generator: torch.Generator) -> None:
    """Draw `head`'s weights afresh (`draw_head`) from `generator`, in place: the seed alone fixes them."""
    drawn = draw_head(head.in_features, head.out_features, generator, head.weight.device)
    with torch.no_grad():
        head.weight.copy_(drawn["head.weight"])
        head.bias.copy_(drawn["head.bias"])


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


class SimulatedAttacker(BaseModel):
    """The attackers a defense simulates during training (`mlac`'s inner loop, `sophon`'s fine-tuning suppression).

    A defense's parameter model inherits these fields (and may change their defaults); each simulated attack draws
    its learning rate (`sample_lr`) and its setting (`sample_setting`) from them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    inner_steps: int = Field(16, ge=0, description="steps of each simulated attack")
    inner_lr_range: tuple[float, float] = Field((1e-5, 1e-3), description="log-uniform range of a sampled inner lr")
    inner_batch_sizes: tuple[int, ...] = Field((12, 24, 48), min_length=1, description="capped at the rows available")
    inner_optimizers: tuple[OptimizerName, ...] = Field(("adam",), min_length=1)
    inner_adapt: tuple[Adapt, ...] = Field(("full",), min_length=1, description="attack kinds to sample")
    inner_top_k: int = Field(1, ge=1, description="layers adapted by a sampled top-k attack")
    inner_grad_clip: float = Field(100.0, gt=0, description="inner gradient clip (global norm)")

    @model_validator(mode="after")
    def _attacker_consistent(self) -> "SimulatedAttacker":
        low, high = self.inner_lr_range
        if not 0 < low <= high:
            raise ValueError(f"inner_lr_range must satisfy 0 < low <= high, got ({low}, {high})")
        if any(b < 1 for b in self.inner_batch_sizes):
            raise ValueError(f"inner_batch_sizes must be positive, got {self.inner_batch_sizes}")
        return self

    def sample_lr(self, generator: torch.Generator) -> float:
        """A learning rate drawn log-uniformly from `inner_lr_range`."""
        low, high = (math.log(v) for v in self.inner_lr_range)
        return math.exp(low + float(torch.rand((), generator=generator)) * (high - low))

    def sample_setting(self, generator: torch.Generator, lr: float, pool: int) -> AttackSetting:
        """One simulated attacker with learning rate `lr`, its batches drawn from `pool` rows (see `sample_setting`)."""
        return sample_setting(
            generator, lr=lr, steps=self.inner_steps, batch_sizes=self.inner_batch_sizes, pool=pool,
            adapts=self.inner_adapt, top_k=self.inner_top_k, optimizers=self.inner_optimizers,
        )


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


def ridge_probe_score(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ridge: float) -> torch.Tensor:
    """How well a linear probe fitted on these features predicts the labels of examples it did not see.

    A ridge regression to one-hot labels, in closed form in the dual (n x n, since batches are smaller than the
    feature width), scored by its leave-one-out R^2 (the LOO residuals of ridge are exact in closed form:
    e_i = (y_i - yhat_i) / (1 - H_ii)). The penalty scales with the features, so shrinking them does not help;
    centring uses the whole batch, a small approximation to true leave-one-out. Clamped at 0: no reward for a probe
    worse than predicting the mean.
    """
    n = features.shape[0]
    x = features - features.mean(0)
    y = F.one_hot(labels, num_classes).to(x.dtype)
    y = y - y.mean(0)
    gram = x @ x.T
    alpha = ridge * gram.diagonal().mean() + 1e-8
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    hat = torch.linalg.solve(gram + alpha * eye, gram)  # H = (K + aI)^-1 K = K (K + aI)^-1 (they commute)
    residual = (y - hat @ y) / (1 - hat.diagonal()).unsqueeze(-1)
    baseline = y.pow(2).sum() * (n / (n - 1)) ** 2  # LOO residuals of predicting the mean of the other rows
    return (1 - residual.pow(2).sum() / baseline.clamp_min(1e-12)).clamp_min(0.0)
