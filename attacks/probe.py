"""`probe`: a linear probe on the frozen encoder."""

from __future__ import annotations

from typing import Any

from attacks.finetune import FineTuning
from harness.registry import register_attack


@register_attack("probe")
class Probe(FineTuning):
    """Linear probe: frozen encoder (features cached once per cell), fresh linear head."""

    def adaptation(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"adapt": "probe"}

    def needs_features(self) -> bool:
        return True
