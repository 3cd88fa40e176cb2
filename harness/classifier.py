"""Encoder + pooling + linear head: the model every defense trains and every attack fine-tunes."""

from __future__ import annotations

import torch
from torch import nn


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class Classifier(nn.Module):
    """`precision` is the resolved precision its forward passes run at in the harness's training and evaluation loops
    ("bf16": under bf16 autocast, weights kept float32; see `harness.training.resolve_precision`)."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "mean", precision: str = "fp32"):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.precision = precision
        self.head = nn.Linear(int(encoder.config.hidden_size), num_labels)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask) if self.pooling == "mean" else hidden[:, 0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))

    def reset_head(self, generator: torch.Generator | None = None) -> None:
        """Fresh head weights, drawn from `generator` (a CPU generator, as every seeded draw here) so a trial's seed
        fixes them. They are drawn on the CPU and then copied to the head's device: a CUDA tensor refuses a CPU
        generator, and CPU and GPU runs of one seed draw the same head."""
        fan_in = self.head.in_features
        bound = 1.0 / fan_in**0.5
        with torch.no_grad():
            for param in (self.head.weight, self.head.bias):
                drawn = torch.empty(param.shape, dtype=param.dtype).uniform_(-bound, bound, generator=generator)
                param.copy_(drawn)
