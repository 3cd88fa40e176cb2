"""`top-k`: fine-tune only the last k encoder layers and a fresh head."""

from __future__ import annotations

from typing import Any

from attacks.finetune import FineTuning
from harness.registry import register_attack
from harness.space import IntRange, Space


@register_attack("top-k")
class TopK(FineTuning):
    """The last k encoder layers and a fresh head adapt (k searched); embeddings and lower layers stay frozen."""

    def adapt_space(self) -> Space:
        # A k above the encoder's depth adapts every layer (never the embeddings).
        return {"top_k": IntRange(low=1, high=3)}

    def adaptation(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"adapt": "top-k", "top_k": config["top_k"]}
