"""Representation Noising (RepNoise), after Rosati et al., "Representation Noising: A Defence Mechanism Against
Harmful Finetuning" (NeurIPS 2024, arXiv 2405.14577).

RepNoise trains on three terms at once: a stability loss on harmless data, a term that pushes the representations of
harmful data at every layer towards Gaussian noise (a maximum mean discrepancy, MMD), and gradient ascent on the
harmful loss. Here, every step draws one batch of training rows (each carries both labels) and minimises

    desired-task cross-entropy  +  noise_weight * noise term  +  ascent_weight * ascent term

- noise term: for each layer's pooled representations (the classifier's own pooling) and each harmful class in the
  batch, the MMD between that class's representations and Gaussian noise, averaged over layers and classes;
- ascent term: the negated harmful cross-entropy of a persistent harmful head, each example's clamped at
  `ascent_cap * log C` (bounded ascent), while that head keeps learning the harmful task on the current features.

What was adapted or approximated, and why:
- The paper noises the representations of harmful *inputs* (harmful prompts and answers) and keeps harmless ones. In
  task blocking both tasks read the same biographies, so noising every harmful-batch representation would erase the
  desired task as well. What must carry no harmful information here is the harmful *label*: each harmful class's
  representations are matched to the same noise distribution, so the classes become indistinguishable from noise
  and from each other, while the desired task stays free to use the shape within that distribution.
- Representations are pooled per layer (not per token), since the attacker's head reads pooled features.
- The noise has the representations' own scale (their root mean square, not differentiated), and the kernel is a
  sum of Gaussian kernels with bandwidths relative to the representations' mean squared norm, so the MMD measures
  the *shape* of the distribution, not a change of scale the encoder could make for free.
- An encoder has no harmful head of its own to ascend on (an LLM ascends on its language-modelling head), so the
  ascent term uses a head trained alongside (Adam, `head_lr`), as `adversarial` does. It has a small default weight
  and stops at chance level: any push that depends on the harmful label puts label information into the features
  (a confidently wrong head is read as well as a right one), and on the tests' tiny task ascent alone raised a
  probe's harmful accuracy instead of lowering it (measurements in docs/defenses.md).
- No dropout (eval mode), so a run is deterministic for its seed and resumes bit for bit from a checkpoint.
- At bf16 (`DefenseContext.precision`) the encoder's forward pass runs under bf16 autocast; the pooled
  representations, the MMD and every loss are computed in float32, and the weights and Adam stay float32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.attack_step import sample_batch
from harness.censoring import OuterParams, capped_neg_ce, init_head, make_batch
from harness.classifier import mean_pool
from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense
from harness.resumable import CheckpointedTrainer, Part, train_resumable
from harness.training import upcast

KERNEL_SCALES = (0.25, 1.0, 4.0)  # bandwidths, relative to the representations' mean squared norm


class RepNoiseParams(OuterParams):
    """The censoring defenses' outer optimisation (each batch row gives a desired and a harmful label) and the terms."""

    noise_weight: float = Field(1.0, ge=0, description="beta: weight of the representation-noise MMD term")
    ascent_weight: float = Field(0.1, ge=0, description="alpha: weight of the bounded harmful gradient ascent")
    ascent_cap: float = Field(1.0, gt=0, description="per-example harmful cross-entropy clamped at cap * log(C)")
    head_lr: float = Field(1e-3, gt=0, description="Adam lr of the harmful head the ascent term is measured with")
    layers: Literal["all", "last"] = Field("all", description="noise every layer's pooled representations, or the last")


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Squared MMD (biased estimate, >= 0) between samples x and y, with a sum of Gaussian kernels.

    Kernel bandwidths are `KERNEL_SCALES` times `scale` (a squared distance). Squared distances are formed from
    inner products rather than `torch.cdist`, whose gradient at zero distance (the diagonal) is not finite.
    """
    z = torch.cat([x, y])
    sq = z.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0.0)
    kernel = sum(torch.exp(-dist / (s * scale)) for s in KERNEL_SCALES)
    n = len(x)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def noise_term(
    layers: list[torch.Tensor], labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Mean over layers and harmful classes of MMD(class's pooled representations, Gaussian noise)."""
    terms = []
    for features in layers:
        scale = features.detach().pow(2).sum(1).mean().clamp_min(1e-12)  # mean squared norm
        rms = (scale / features.shape[1]).sqrt()
        for c in range(num_classes):
            rows = features[labels == c]
            if len(rows) < 2:
                continue  # one row says nothing about a distribution
            noise = torch.randn(rows.shape, generator=generator).to(rows.device) * rms
            terms.append(gaussian_mmd(rows, noise, scale))
    return torch.stack(terms).mean() if terms else layers[-1].new_zeros(())


class RepNoiseTrainer(CheckpointedTrainer):
    """A RepNoise training run; its state is checkpointable for an identical continuation."""

    def __init__(self, p: RepNoiseParams, ctx: DefenseContext):
        self.p = p
        self.ctx = ctx
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.model = ctx.classifier(ctx.num_labels[ctx.desired])
        self.model.eval()
        self.harm_head = torch.nn.Linear(self.model.head.in_features, ctx.num_labels[ctx.harmful]).to(ctx.device)
        for head in (self.model.head, self.harm_head):  # both from the run's generator: the seed alone fixes the run
            init_head(head, self.generator)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=p.lr)
        self.head_optimizer = torch.optim.Adam(self.harm_head.parameters(), lr=p.head_lr)
        self.step_count = 0

    def pooled_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Pooled representations of every layer's output (the last one is the classifier's features), float32."""
        with self.ctx.autocast():
            out = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[1:] if self.p.layers == "all" else out.hidden_states[-1:]
        hidden = [upcast(h) for h in hidden]
        if self.model.pooling == "mean":
            return [mean_pool(h, attention_mask) for h in hidden]
        return [h[:, 0] for h in hidden]

    def step(self) -> dict[str, float]:
        p, ctx = self.p, self.ctx
        index = sample_batch(len(ctx.train), p.batch_size, self.generator)
        batch = make_batch(ctx.train, index, ctx.desired, ctx.device)
        harmful = torch.from_numpy(ctx.train.labels[ctx.harmful][index.numpy()]).to(ctx.device)
        layers = self.pooled_layers(batch.input_ids, batch.attention_mask)
        features = layers[-1]
        desired = F.cross_entropy(self.model.head(features), batch.labels)
        noise = noise_term(layers, harmful, self.harm_head.out_features, self.generator)
        # The head is the adversary's: the encoder ascends its loss, the head's own update comes below.
        harm_logits = F.linear(features, self.harm_head.weight.detach(), self.harm_head.bias.detach())
        ascent = capped_neg_ce(harm_logits, harmful, p.ascent_cap)
        total = desired + p.noise_weight * noise + p.ascent_weight * ascent
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.grad_clip)
        self.optimizer.step()
        self.head_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.harm_head(features.detach()), harmful).backward()
        self.head_optimizer.step()
        self.step_count += 1
        return {"desired_loss": desired.item(), "noise_mmd": noise.item(), "harmful_loss": -ascent.item()}

    def parts(self) -> dict[str, Part]:
        # The generator is the run's only source of randomness (eval mode: no dropout).
        return {"model": self.model, "harm_head": self.harm_head, "opt": self.optimizer,
                "head_opt": self.head_optimizer, "rng": self.generator}


@register_defense("repnoise")
class RepNoise(Defense):
    """RepNoise (Rosati et al. 2024): each harmful class's representations pushed to noise, plus bounded ascent."""

    Params = RepNoiseParams

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return train_resumable(RepNoiseTrainer(self.params, ctx), self.params.steps, ctx, self.name)
