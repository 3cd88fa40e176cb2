"""The censoring trainer that `bert`, `adversarial` and `mlac` run: MLAC, with adversarial censoring (AC) as its K=0
case and the matched control as AC with the censoring term off.

Every outer step
1. samples a simulated attack (`AttackSetting`: what adapts, optimizer, inner batch size; the inner learning rate is
   learned or sampled) and a fresh or persistent harmful head;
2. runs K differentiable steps of that attack on harmful-task batches: `torch.func.functional_call` over the harmful
   classifier's parameters dict, gradients with `create_graph=True` (or detached, `first_order`), clipped by global
   norm, and the shared `harness.attack_step.optimizer_update`, so the simulated attacker and the real attack plugins
   run the same update;
3. the defender minimises  desired-task loss (encoder + desired head)  +  harmful_weight * censoring loss of the
   *adapted* model on a held-out harmful batch, with Adam on the encoder and the desired head only;
4. with `inner_lr="learned"`, the simulated attacker's log inner lr takes a step of its own Adam (`inner_lr_lr`) on
   the attacker's objective: the adapted model's harmful cross-entropy on that held-out batch. The two gradients are
   taken on the same graph before either update, and neither optimizer moves the other's variables.

With K=0 and a persistent ("learned") harmful head trained to predict the harmful label on the current features,
this is the paper's adversarial-censoring baseline; `defenses.adversarial` runs this same code with K=0, and
`defenses.bert` (the matched control) with K=0 and `harmful_weight=0`; `defenses.mlac` runs it as it is.

Choices worth knowing:
- `harmful_head="reset"` draws the simulated attacker's head afresh every outer step, like the evaluation attacker
  (and like the reference code, whose learned adversarial head is never used). `"learned"` keeps one persistent head,
  trained by its own Adam (`head_lr`) on the current encoder's features, so the simulated attacker starts from a head
  that already predicts harm: a stronger adversary, and the only meaningful one when K=0.
- Censoring losses (`harness.censoring`): `entropy` (KL(uniform || p), zero when the adapted head predicts
  uniformly; the default because a confidently *wrong* binary classifier is as informative as a right one, which is
  what an unbounded negated CE drives towards), `neg_ce` (negated per-example CE, clamped at `neg_ce_cap * log C`
  so it cannot blow up), and `probe` (the leave-one-out R^2 of a closed-form ridge probe fitted on the adapted
  features: a differentiable stand-in for the reference's calibrated linear probe, needing no external solver; see
  `harness.censoring.ridge_probe_score`).
- Inner learning rate: `inner_lr="learned"` (the reference's choice) gives log(lr) its own Adam (`inner_lr_lr`) that
  minimises the adapted model's harmful cross-entropy, so the simulated attacker gets stronger as it learns, kept
  within `inner_lr_bounds`; the defender's outer step never moves it. With `first_order` the inner gradients are
  detached but the lr still scales every inner update, so its gradient is exact through the updates (only the
  gradients' own dependence on earlier updates is dropped). `"sampled"` draws it log-uniformly from
  `inner_lr_range` each step, closer to the evaluation attacker's search.
- First-order MLAC (`first_order=True`, K > 0) is a different method, labelled `first-order` in reports
  (`Mlac.variant`): with probe attackers it is adversarial censoring against a freshly trained head.
- Data: each step holds out `batch_size` harmful rows for the censoring loss and draws the K inner batches from the
  other rows, so the adapted model is judged on examples its simulated attacker did not train on.
- The model stays in eval mode (no dropout): the inner loops are deterministic and a resumed run repeats the same
  trajectory bit for bit (checkpoints hold the weights, the three Adam states (defender, learned lr, persistent
  head), the learned lr, the persistent head and the run's random generator, its only source of randomness).
- Precision (`model.precision`, resolved by `DefenseContext.precision`): at bf16 every forward pass (desired batch,
  inner steps, held-out batch) runs under bf16 autocast; losses, inner gradients, inner optimizer states, the
  weights and the outer Adam stay float32. SECOND_ORDER_PRECISION says what second-order MLAC runs at.
- When the word embeddings adapt and the simulated attacker has no weight decay (always, for sampled settings), the
  inner loop adapts only the embedding rows of tokens in this step's harmful batches. Rows no inner batch touches get
  zero gradients at every inner step, so Adam and SGD-with-momentum leave them exactly where they are: the result is
  the same, and the inner loop skips optimizer arithmetic (and saved graph) over a 30k-row table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from harness.attack_step import (
    AttackSetting,
    adapted_parameter_names,
    init_optimizer_state,
    optimizer_update,
    sample_batch,
)
from harness.censoring import (
    Batch,
    OuterParams,
    SimulatedAttacker,
    capped_neg_ce,
    clip_by_global_norm,
    draw_head,
    functional_forward,
    init_head,
    kl_to_uniform,
    make_batch,
    ridge_probe_score,
)
from harness.classifier import Classifier
from harness.plugins import DefenseContext
from harness.resumable import CheckpointedTrainer, Part, train_resumable
from harness.training import autocast, upcast

Censor = Literal["entropy", "neg_ce", "probe"]
HeadMode = Literal["reset", "learned"]

WORD_EMBEDDINGS = "encoder.embeddings.word_embeddings.weight"
# Checkpoint metadata: what the learned inner lr descends (older checkpoints had it in the defender's optimizer).
INNER_LR_OBJECTIVE = "attacker"
PAD_ID = 0  # BERT's padding id: TokenizedSplit pads with it and the embedding's padding_idx is it


class CensorParams(OuterParams):
    """The outer optimisation (`bert`'s) and the censoring loss, shared by `adversarial` and `mlac`."""

    harmful_weight: float = Field(1.0, ge=0, description="lambda: weight of the censoring loss")
    censor: Censor = Field("entropy", description="censoring loss on the (adapted) harmful head's output")
    neg_ce_cap: float = Field(2.0, gt=0, description="neg_ce: per-example cross-entropy clamped at cap * log(C)")
    probe_ridge: float = Field(0.1, gt=0, description="probe: ridge penalty relative to the mean squared feature norm")
    head_lr: float = Field(1e-3, gt=0, description="Adam lr of the persistent harmful head (harmful_head=learned)")


class CensorTrainerParams(CensorParams, SimulatedAttacker):
    """Everything the censoring trainer runs: the outer optimisation and censoring loss, the simulated attacker of
    the inner loop (K = `inner_steps`, 0 for none) with its inner learning rate, and the harmful head."""

    inner_steps: int = Field(16, ge=0, description="K differentiable attack steps per outer step (0 = no inner loop)")
    first_order: bool = Field(False, description="detach inner gradients (first-order MAML): cheaper, less exact")
    inner_lr: Literal["learned", "sampled"] = Field(
        "learned",
        description="learned: one log-lr with its own Adam (inner_lr_lr) on the attacker's objective, the adapted "
        "model's harmful cross-entropy (the simulated attacker gets stronger; the defender never moves it; clamped "
        "to inner_lr_bounds); sampled: log-uniform from inner_lr_range each outer step",
    )
    inner_lr_init: float = Field(3e-4, gt=0)
    inner_lr_bounds: tuple[float, float] = Field((1e-6, 1e-2), description="clamp of the learned inner lr")
    inner_lr_lr: float = Field(1e-3, gt=0, description="lr of the learned log inner lr's own (attacker's) Adam")
    harmful_head: HeadMode = Field("reset", description="reset: fresh head every outer step; learned: persistent head")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "CensorTrainerParams":
        low, high = self.inner_lr_bounds
        if not 0 < low <= high:
            raise ValueError(f"inner_lr_bounds must satisfy 0 < low <= high, got ({low}, {high})")
        return self


# -- the meta-objective -----------------------------------------------------------------------------------------------
@dataclass
class MetaLoss:
    total: torch.Tensor  # the defender's loss: desired + harmful_weight * censor, differentiable w.r.t. its variables
    attack: torch.Tensor  # the attacker's loss: adapted harmful cross-entropy, differentiable w.r.t. the inner lr
    desired: torch.Tensor
    censor: torch.Tensor
    harmful_ce: torch.Tensor  # `attack`, detached
    head_features: torch.Tensor  # unadapted encoder features of a harmful batch (detached), to train a learned head
    head_labels: torch.Tensor


def censor_loss(
    kind: Censor, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, p: CensorParams
) -> torch.Tensor:
    if kind == "entropy":
        return kl_to_uniform(logits)
    if kind == "neg_ce":
        return capped_neg_ce(logits, labels, p.neg_ce_cap)
    return ridge_probe_score(features, labels, logits.shape[-1], p.probe_ridge)


def meta_loss(
    model: Classifier,
    harm: Classifier,
    head_init: dict[str, torch.Tensor],
    setting: AttackSetting | None,
    inner_lr: float | torch.Tensor,
    desired: Batch,
    inner: Sequence[Batch],
    held_out: Batch,
    p: CensorTrainerParams,
    compact_vocab: bool = True,
    precision: str = "fp32",
) -> MetaLoss:
    """The MLAC outer loss for one outer step.

    `model` (encoder + desired head) holds the outer variables; `harm` shares its encoder and supplies the harmful
    classifier's structure, its head replaced by `head_init` (constants: the defender does not choose the attacker's
    head). The simulated attack `setting` runs one step per batch of `inner` with learning rate `inner_lr`.

    With `harmful_weight=0` and no inner loop (`bert`, the matched control) the held-out forward runs without a
    graph: its gradient would be exactly zero, so the weights are the same and the random draws are untouched.

    `precision` "bf16": forward passes under bf16 autocast, each in its own region (see the module docstring).
    """
    device = desired.input_ids.device

    def forward(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(device, precision):
            features, logits = functional_forward(harm, params, batch, ids_of(batch))
        return upcast(features), upcast(logits)

    with autocast(device, precision):
        desired_logits = model(desired.input_ids, desired.attention_mask)
    desired_loss = F.cross_entropy(upcast(desired_logits), desired.labels)

    params: dict[str, torch.Tensor] = {n: t for n, t in harm.named_parameters() if not n.startswith("head.")}
    params.update({n: t.detach().requires_grad_(True) for n, t in head_init.items()})
    names = adapted_parameter_names(list(params), setting.adapt, setting.top_k) if inner else []
    # Compact vocabulary: adapt only the embedding rows this step's harmful batches use (see the module docstring).
    remap: torch.Tensor | None = None
    if compact_vocab and WORD_EMBEDDINGS in names and setting.weight_decay == 0:
        table = params[WORD_EMBEDDINGS]
        used = torch.cat([b.input_ids.flatten() for b in [*inner, held_out]])
        rows = torch.unique(torch.cat([used.new_tensor([PAD_ID]), used]))  # sorted: pad id stays row 0
        remap = torch.full((table.shape[0],), -1, dtype=torch.long, device=table.device)
        remap[rows] = torch.arange(len(rows), device=table.device)
        params[WORD_EMBEDDINGS] = table[rows]

    def ids_of(batch: Batch) -> torch.Tensor | None:
        return None if remap is None else remap[batch.input_ids]

    head_features: torch.Tensor | None = None
    head_labels = held_out.labels
    if names:
        state = init_optimizer_state([params[n] for n in names], setting.optimizer)
        for k, batch in enumerate(inner):
            features, logits = forward(batch)
            if k == 0:
                head_features, head_labels = features.detach(), batch.labels
            loss = F.cross_entropy(logits, batch.labels)
            current = [params[n] for n in names]
            grads = torch.autograd.grad(loss, current, create_graph=not p.first_order, materialize_grads=True)
            if p.first_order:
                grads = tuple(g.detach() for g in grads)
            grads = clip_by_global_norm(grads, p.inner_grad_clip)
            new, state = optimizer_update(current, grads, state, setting, inner_lr)
            params.update(zip(names, new))

    with torch.set_grad_enabled(torch.is_grad_enabled() and (p.harmful_weight != 0 or bool(names))):
        features, logits = forward(held_out)
        censor = censor_loss(p.censor, logits, features, held_out.labels, p)
        attack = F.cross_entropy(logits, held_out.labels)
    if head_features is None:
        head_features = features.detach()
    total = desired_loss + p.harmful_weight * censor
    return MetaLoss(total, attack, desired_loss.detach(), censor.detach(), attack.detach(), head_features, head_labels)


# -- training ---------------------------------------------------------------------------------------------------------
# What second-order MLAC (K > 0, not first-order) runs at when the config resolves to bf16. Measured (docs/benchmarks.md,
# "Mixed precision"; MiniLM-L6, max_length 64, K=2): the bf16 meta-gradient is finite, cosine 0.977 to fp32's (norm
# ratio 1.02), d/d log lr 0.00779 vs 0.0080, and 3 training steps' harmful losses agree to 1e-3, at 5.3x the speed:
# bf16. Set "fp32" here to keep double backward in float32 if a longer run shows it drifting.
SECOND_ORDER_PRECISION = "bf16"


def training_precision(p: CensorTrainerParams, resolved: str) -> str:
    """The precision a censoring training runs at, given the one its context resolved to."""
    second_order = p.inner_steps > 0 and not p.first_order
    return SECOND_ORDER_PRECISION if second_order and resolved == "bf16" else resolved


class CensorTrainer(CheckpointedTrainer):
    """The state of an AC/MLAC training run and its outer step; checkpointable for an identical continuation."""

    def __init__(self, p: CensorTrainerParams, ctx: DefenseContext):
        if p.inner_steps and len(ctx.train) <= p.batch_size:
            raise ValueError(
                f"the defense's training split has {len(ctx.train)} rows: MLAC needs more than batch_size "
                f"({p.batch_size}), which it holds out from the inner batches at every step"
            )
        self.p = p
        self.ctx = ctx
        self.device = ctx.device
        self.precision = training_precision(p, ctx.precision)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.model = ctx.classifier(ctx.num_labels[ctx.desired])
        self.harm = ctx.classifier(ctx.num_labels[ctx.harmful], encoder=self.model.encoder)
        self.model.eval()
        self.harm.eval()
        for clf in (self.model, self.harm):
            init_head(clf.head, self.generator)
        # The defender's variables (encoder and desired head) and the simulated attacker's (the learned log inner lr,
        # the persistent harmful head) have an Adam each, on their own objectives; neither moves the other's.
        self.outer_params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.outer_params, lr=p.lr)
        self.log_lr = torch.nn.Parameter(torch.tensor(math.log(p.inner_lr_init), device=self.device))
        self.learns_lr = p.inner_lr == "learned" and p.inner_steps > 0
        self.lr_optimizer = torch.optim.Adam([self.log_lr], lr=p.inner_lr_lr)
        self.head_optimizer = torch.optim.Adam(self.harm.head.parameters(), lr=p.head_lr)
        self.step_count = 0

    # -- one outer step ---------------------------------------------------------------------------------------------
    def inner_lr(self) -> torch.Tensor | float:
        if self.p.inner_lr == "learned":
            return self.log_lr.exp()
        return self.p.sample_lr(self.generator)

    def sample(self) -> tuple[Batch, list[Batch], Batch, AttackSetting | None, torch.Tensor | float]:
        """This step's batches, simulated attacker and inner lr, all drawn from the run's generator."""
        p, ctx, g = self.p, self.ctx, self.generator
        n = len(ctx.train)
        order = torch.randperm(n, generator=g)
        held, pool = order[: p.batch_size], order[p.batch_size :]
        desired = make_batch(ctx.train, sample_batch(n, p.batch_size, g), ctx.desired, self.device)
        held_out = make_batch(ctx.train, held, ctx.harmful, self.device)
        setting, lr, inner = None, 0.0, []
        if p.inner_steps:
            lr = self.inner_lr()
            # No weight decay in a simulated attacker: the compact-vocabulary inner loop relies on it.
            setting = p.sample_setting(g, float(lr.detach()) if torch.is_tensor(lr) else lr, len(pool))
            inner = [
                make_batch(ctx.train, pool[sample_batch(len(pool), setting.batch_size, g)], ctx.harmful, self.device)
                for _ in range(p.inner_steps)
            ]
        return desired, inner, held_out, setting, lr

    def head_init(self) -> dict[str, torch.Tensor]:
        if self.p.harmful_head == "reset":
            return draw_head(self.harm.head.in_features, self.harm.head.out_features, self.generator, self.device)
        return {"head.weight": self.harm.head.weight, "head.bias": self.harm.head.bias}

    def attacker_gradient(self, out: MetaLoss) -> torch.Tensor | None:
        """d(adapted harmful cross-entropy) / d(log inner lr), or None when the inner lr is not learned.

        Taken with `autograd.grad`, so nothing accumulates into the defender's gradients; the graph is kept for the
        defender's backward.
        """
        if not self.learns_lr:
            return None
        (grad,) = torch.autograd.grad(out.attack, [self.log_lr], retain_graph=True, materialize_grads=True)
        return grad

    def attacker_step(self, grad: torch.Tensor) -> None:
        """The simulated attacker's own Adam step on its log inner lr (descending its harmful loss), then the clamp."""
        self.lr_optimizer.zero_grad(set_to_none=True)
        self.log_lr.grad = grad.detach().clone()
        self.lr_optimizer.step()
        self.log_lr.grad = None
        with torch.no_grad():
            low, high = (math.log(v) for v in self.p.inner_lr_bounds)
            self.log_lr.clamp_(low, high)

    def defender_step(self, out: MetaLoss) -> None:
        """The defender's clipped Adam step on the encoder and desired head; the inner lr gets no gradient from it."""
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward(inputs=self.outer_params)
        torch.nn.utils.clip_grad_norm_(self.outer_params, self.p.grad_clip)
        self.optimizer.step()

    def step(self) -> dict[str, float]:
        p = self.p
        desired, inner, held_out, setting, lr = self.sample()
        out = meta_loss(self.model, self.harm, self.head_init(), setting, lr, desired, inner, held_out, p,
                        precision=self.precision)
        lr_grad = self.attacker_gradient(out)  # before the defender's step changes the weights in place
        self.defender_step(out)
        if lr_grad is not None:
            self.attacker_step(lr_grad)
        if p.harmful_head == "learned":
            # The adversary: the persistent head learns to predict harm from the (pre-update) encoder's features.
            self.head_optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.harm.head(out.head_features), out.head_labels).backward()
            self.head_optimizer.step()
        self.step_count += 1
        metrics = {"desired_loss": float(out.desired), "harmful_loss": float(out.harmful_ce)}
        if p.inner_steps:
            metrics["inner_lr"] = float(lr.detach()) if torch.is_tensor(lr) else lr
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def parts(self) -> dict[str, Part]:
        # The run draws all its randomness from its generator (eval mode: no dropout), never from the global torch
        # or numpy generators, so its state is the only random state a continuation needs.
        return {
            "model": self.model, "harm_head": self.harm.head, "log_lr": self.log_lr, "outer": self.optimizer,
            "head_opt": self.head_optimizer, "lr_opt": self.lr_optimizer, "rng/sampler": self.generator,
        }

    def metadata(self) -> dict[str, Any]:
        return {"inner_lr_objective": INNER_LR_OBJECTIVE}

    def check_metadata(self, metadata: dict[str, Any]) -> None:
        if self.learns_lr and metadata.get("inner_lr_objective") != INNER_LR_OBJECTIVE:
            raise ValueError(
                "checkpoint was written by an older mlac whose learned inner lr followed the defender's objective; "
                "it cannot continue this training (delete the defense's work folder to start afresh)"
            )


def train_censoring(p: CensorTrainerParams, ctx: DefenseContext, name: str) -> dict[str, torch.Tensor]:
    """Run (or resume) an AC/MLAC training and return the defended encoder's state dict."""
    return train_resumable(CensorTrainer(p, ctx), p.steps, ctx, name)
