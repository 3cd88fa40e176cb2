"""SOPHON non-fine-tunable learning, after Deng et al., "SOPHON: Non-Fine-Tunable Learning to Restrain Task
Transferability For Pre-trained Models" (IEEE S&P 2024, arXiv 2404.12699).

SOPHON alternates two loops. Fine-tuning suppression (FTS) simulates fine-tuning on the restricted (harmful) task
and makes the model bad at it *during and after* that fine-tuning; normal-training reinforcement (NTR) trains on the
original (desired) task so utility survives. Each training step here is one round of both:

1. `suppression_steps` FTS updates. Each averages over `environments` simulated attackers, drawn from the options
   below (learning rate log-uniform in `inner_lr_range`, batch size, optimizer, full fine-tuning or a linear probe)
   with a freshly drawn harmful head, like the evaluation attacker's. Each attacker takes `inner_steps` steps of the
   shared attack step (`harness.attack_step.optimizer_update`) on harmful batches; after every step (and before the
   first) the suppression loss of the adapted model is measured on a held-out harmful batch. First-order MAML: the
   gradient of each of these losses with respect to the *adapted* encoder is applied to the encoder itself, averaged
   over steps and environments, with Adam (`suppression_lr`).
2. `desired_steps` NTR updates: cross-entropy on the desired task (encoder and desired head), Adam (`lr`).

Suppression losses: `kl_uniform` (KL(uniform || p), zero when the adapted head predicts uniformly; SOPHON's
"denial of service" loss and the default) or `inverse_ce` (-log(1 - p_true), SOPHON's loss for classification). On a
binary harmful task the inverse cross-entropy is minimised by a confidently *wrong* head, which an attacker reads as
well as a right one (flip the decision), so `kl_uniform` is the default here.

What was adapted or approximated:
- The paper restricts a whole domain (other images) with the model's own classifier; here the restricted task is a
  label of the same inputs, and the simulated attacker always starts from a fresh head (the evaluation protocol).
- Simulated attackers use a constant learning rate, no weight decay and the inner gradient clip `inner_grad_clip`.
  A probe leaves the encoder unchanged, so its held-out features are computed once and the summed suppression
  gradient goes through the encoder once (the same gradient, fewer passes).
- The simulated attackers must be about as strong as the evaluation's: weak ones (few steps, small learning rates)
  end near uniform whatever the encoder does, and suppress nothing (measurements in docs/defenses.md).
- No dropout (eval mode), so a run is deterministic for its seed and resumes bit for bit from a checkpoint.
- At bf16 (`DefenseContext.precision`) every forward pass runs under bf16 autocast, each in its own region (the
  attacker's in-place updates happen outside them); losses, gradients, weights and both Adams stay float32.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.attack_step import (
    Adapt,
    AttackSetting,
    OptimizerState,
    adapted_parameter_names,
    init_optimizer_state,
    optimizer_update,
    sample_batch,
)
from harness.censoring import Batch, SimulatedAttacker, clip_by_global_norm, init_head, kl_to_uniform, make_batch
from harness.classifier import Classifier
from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense
from harness.resumable import CheckpointedTrainer, Part, train_resumable
from harness.training import autocast, model_precision, upcast

Suppression = Literal["kl_uniform", "inverse_ce"]


class SophonParams(SimulatedAttacker):
    """SOPHON's rounds and updates, and its simulated attackers (`harness.censoring.SimulatedAttacker`)."""

    steps: int = Field(500, ge=0, description="rounds of (suppression_steps FTS updates, desired_steps NTR updates)")
    lr: float = Field(1e-5, gt=0, description="Adam lr of the normal-training (desired task) updates")
    suppression_lr: float = Field(1e-5, gt=0, description="Adam lr of the fine-tuning-suppression updates")
    batch_size: int = Field(20, gt=1, description="desired batch and held-out harmful batch size")
    grad_clip: float = Field(10.0, gt=0, description="gradient clip of both updates (global norm)")
    suppression_steps: int = Field(1, ge=1, description="FTS updates per round")
    desired_steps: int = Field(1, ge=0, description="NTR updates per round")
    environments: int = Field(1, ge=1, description="simulated attackers averaged per FTS update")
    suppression: Suppression = Field("kl_uniform", description="loss of the adapted model on held-out harmful rows")
    # Stronger simulated attackers than mlac's by default (see the module docstring).
    inner_steps: int = Field(16, ge=1, description="simulated fine-tuning steps per attacker")
    inner_lr_range: tuple[float, float] = Field((1e-4, 1e-2), description="log-uniform range of the attacker's lr")
    inner_adapt: tuple[Adapt, ...] = Field(("full", "probe"), min_length=1, description="attack kinds to sample")


def suppression_loss(kind: Suppression, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if kind == "kl_uniform":
        return kl_to_uniform(logits)
    # -log(1 - p_true) = -log(sum of the other classes' probabilities), computed in log space for stability.
    log_p = F.log_softmax(logits, -1)
    others = log_p.masked_fill(F.one_hot(labels, logits.shape[-1]).bool(), -math.inf)
    return -torch.logsumexp(others, -1).mean()


def attack_step(
    attacker: Classifier,
    batch: Batch,
    adapted: list[torch.Tensor],
    state: OptimizerState,
    setting: AttackSetting,
    clip: float,
) -> OptimizerState:
    """One step of a simulated attacker, in place: the shared attack step with a clipped gradient (forward passes at
    the attacker's precision)."""
    region = autocast(batch.input_ids.device, model_precision(attacker))
    if setting.adapt == "probe":  # only the head adapts: no graph through the encoder
        with torch.no_grad(), region:
            features = attacker.features(batch.input_ids, batch.attention_mask)
        logits = attacker.head(upcast(features))
    else:
        with region:
            logits = attacker(batch.input_ids, batch.attention_mask)
    loss = F.cross_entropy(upcast(logits), batch.labels)
    grads = clip_by_global_norm(torch.autograd.grad(loss, adapted), clip)
    with torch.no_grad():
        new, state = optimizer_update(adapted, grads, state, setting, setting.lr)
        for param, value in zip(adapted, new):
            param.copy_(value)
    return state


class SophonTrainer(CheckpointedTrainer):
    """A SOPHON training run; its state is checkpointable for an identical continuation."""

    def __init__(self, p: SophonParams, ctx: DefenseContext):
        if len(ctx.train) <= p.batch_size:
            raise ValueError(
                f"the defense's training split has {len(ctx.train)} rows: SOPHON needs more than batch_size "
                f"({p.batch_size}), which it holds out from the simulated attackers' batches"
            )
        self.p = p
        self.ctx = ctx
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.model = ctx.classifier(ctx.num_labels[ctx.desired])
        # The simulated attacker: a copy of the encoder, reloaded from the model's before every attack.
        self.attacker = ctx.classifier(ctx.num_labels[ctx.harmful], encoder=copy.deepcopy(self.model.encoder))
        self.model.eval()
        self.attacker.eval()
        init_head(self.model.head, self.generator)
        self.encoder_params = list(self.model.encoder.parameters())
        self.suppress_optimizer = torch.optim.Adam(self.encoder_params, lr=p.suppression_lr)
        self.desired_optimizer = torch.optim.Adam(self.model.parameters(), lr=p.lr)
        self.step_count = 0

    # -- fine-tuning suppression ------------------------------------------------------------------------------------
    def simulated_attack(self, gradient: list[torch.Tensor]) -> tuple[float, float]:
        """One simulated attacker from the current encoder: adds its suppression gradients (summed over its steps)
        to `gradient`; returns its mean suppression loss and the harmful cross-entropy after its last step."""
        p, ctx, g = self.p, self.ctx, self.generator
        order = torch.randperm(len(ctx.train), generator=g)
        held, pool = order[: p.batch_size], order[p.batch_size :]
        setting = p.sample_setting(g, p.sample_lr(g), len(pool))
        attacker = self.attacker
        attacker.encoder.load_state_dict(self.model.encoder.state_dict())
        init_head(attacker.head, g)
        held_out = make_batch(ctx.train, held, ctx.harmful, ctx.device)
        named = dict(attacker.named_parameters())
        adapted = [named[n] for n in adapted_parameter_names(list(named), setting.adapt, setting.top_k)]
        encoder = list(attacker.encoder.parameters())  # same order as self.encoder_params
        state = init_optimizer_state(adapted, setting.optimizer)
        # A probe leaves the encoder as it is: its held-out features are computed once, and the suppression losses'
        # gradients with respect to them are summed and taken through the encoder once, at the end.
        frozen = setting.adapt == "probe"
        features, feature_grad, losses = None, None, []
        for k in range(p.inner_steps + 1):
            if features is None or not frozen:
                with ctx.autocast():
                    features = upcast(attacker.features(held_out.input_ids, held_out.attention_mask))
            logits = attacker.head(features)
            loss = suppression_loss(p.suppression, logits, held_out.labels)
            # First-order MAML: the gradient at the adapted encoder stands in for the gradient through the steps.
            if frozen:
                (grad,) = torch.autograd.grad(loss, features)
                feature_grad = grad if feature_grad is None else feature_grad + grad
            else:
                self.accumulate(gradient, torch.autograd.grad(loss, encoder, allow_unused=True, materialize_grads=True))
            losses.append(loss.item())
            if k == p.inner_steps:
                break
            rows = pool[sample_batch(len(pool), setting.batch_size, g)]
            batch = make_batch(ctx.train, rows, ctx.harmful, ctx.device)
            state = attack_step(attacker, batch, adapted, state, setting, p.inner_grad_clip)
        if frozen:
            self.accumulate(gradient, torch.autograd.grad(features, encoder, feature_grad, allow_unused=True,
                                                          materialize_grads=True))
        harmful_ce = float(F.cross_entropy(logits.detach(), held_out.labels))
        return sum(losses) / len(losses), harmful_ce

    @staticmethod
    def accumulate(gradient: list[torch.Tensor], grads: tuple[torch.Tensor, ...]) -> None:
        for total, grad in zip(gradient, grads):
            total.add_(grad)

    def suppression_update(self) -> tuple[float, float]:
        p = self.p
        gradient = [torch.zeros_like(t) for t in self.encoder_params]
        results = [self.simulated_attack(gradient) for _ in range(p.environments)]
        with torch.no_grad():
            for param, total in zip(self.encoder_params, gradient):
                param.grad = total / (p.environments * (p.inner_steps + 1))
        torch.nn.utils.clip_grad_norm_(self.encoder_params, p.grad_clip)
        self.suppress_optimizer.step()
        self.suppress_optimizer.zero_grad(set_to_none=True)
        return sum(r[0] for r in results) / len(results), sum(r[1] for r in results) / len(results)

    # -- normal training reinforcement ------------------------------------------------------------------------------
    def desired_update(self) -> float:
        p, ctx = self.p, self.ctx
        batch = make_batch(ctx.train, sample_batch(len(ctx.train), p.batch_size, self.generator), ctx.desired,
                           ctx.device)
        with ctx.autocast():
            logits = self.model(batch.input_ids, batch.attention_mask)
        loss = F.cross_entropy(upcast(logits), batch.labels)
        self.desired_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.grad_clip)
        self.desired_optimizer.step()
        return loss.item()

    def step(self) -> dict[str, float]:
        suppression = [self.suppression_update() for _ in range(self.p.suppression_steps)]
        desired = [self.desired_update() for _ in range(self.p.desired_steps)]
        self.step_count += 1
        metrics = {
            "suppression_loss": sum(s[0] for s in suppression) / len(suppression),
            "harmful_loss": sum(s[1] for s in suppression) / len(suppression),
        }
        if desired:
            metrics["desired_loss"] = sum(desired) / len(desired)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def parts(self) -> dict[str, Part]:
        # The generator is the run's only source of randomness (eval mode: no dropout).
        return {"model": self.model, "suppress_opt": self.suppress_optimizer, "desired_opt": self.desired_optimizer,
                "rng": self.generator}


@register_defense("sophon")
class Sophon(Defense):
    """SOPHON (Deng et al. 2024): first-order MAML against simulated harmful fine-tuning, alternating with training."""

    Params = SophonParams

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return train_resumable(SophonTrainer(self.params, ctx), self.params.steps, ctx, self.name)
