"""`reinit-top`: re-initialise the top k encoder layers, then fine-tune (the whole encoder, or only those layers).

A defense that hides its block in the last layers (a collapsed or adversarial top layer, a censoring term that only
the top representations carry) loses it to this attack: the top layers are redrawn the way the architecture
initialises them (the encoder's own `_init_weights`: normal(0, initializer_range) linear weights, zero biases, unit
LayerNorms), from a stream derived from the trial's seed and the layer's index, and the attacker trains from there.

The number of layers (`reinit_layers`) is searched; the attack cannot see the encoder's depth when the config is
read, so a value above the depth re-initialises every layer (never the embeddings) -- as `top-k` adapts every layer
for a k above the depth. Keep `reinit_layers.high` at or below the encoder's depth (6 for MiniLM-L6, 2 for the smoke
config's tiny BERT) so the search draws no duplicate configurations.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from attacks.finetune import FineTuning
from harness.classifier import Classifier
from harness.registry import register_attack
from harness.space import Choice, IntRange, Space
from harness.trial import derive_seed

log = logging.getLogger(__name__)


@register_attack("reinit-top")
class ReinitTop(FineTuning):
    """The top k encoder layers redrawn from the trial's seed (k searched), then full or top-layers fine-tuning."""

    MODES = ("full", "top")  # what fine-tunes after the re-initialisation: the whole encoder, or the redrawn layers

    def adapt_space(self) -> Space:
        return {"reinit_layers": IntRange(low=1, high=3), "mode": Choice(values=list(self.MODES))}

    def adaptation(self, config: dict[str, Any]) -> dict[str, Any]:
        layers = config["reinit_layers"]
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError("reinit_layers must be an integer of at least 1")
        if config["mode"] not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}")
        if config["mode"] == "top":
            return {"adapt": "top-k", "top_k": layers}
        return {"adapt": "full"}

    def prepare(self, model: Classifier, config: dict[str, Any], seed: int) -> Classifier:
        # In place on the worker's cached model: the next trial reloads the defended encoder (no cached features).
        reinitialise_top_layers(model.encoder, config["reinit_layers"], seed)
        return model


def encoder_layers(encoder: torch.nn.Module) -> torch.nn.ModuleList:
    """The encoder's stack of transformer layers (BERT-style models: `encoder.encoder.layer`)."""
    try:
        return encoder.encoder.layer
    except AttributeError:
        raise TypeError(f"{type(encoder).__name__} has no encoder.layer stack to re-initialise") from None


def reinitialise_top_layers(encoder: torch.nn.Module, k: int, seed: int) -> list[int]:
    """Redraw the last `k` layers of `encoder` (all of them when k exceeds its depth) in place; their indices.

    Each layer is initialised on a CPU copy by the model's own `_init_weights`, under torch's global generator
    seeded from (seed, layer index) inside a forked RNG state, so the draw is the same on every device, the same
    for a layer whatever k is, and leaves the trial's other random streams untouched.
    """
    layers = encoder_layers(encoder)
    depth = len(layers)
    if k > depth:
        log.info("reinit_layers %d is above the encoder's depth %d: re-initialising all %d layers", k, depth, depth)
    chosen = list(range(max(0, depth - k), depth))
    for index in chosen:
        fresh = copy.deepcopy(layers[index]).to("cpu")
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(derive_seed("reinit-top", seed, index))
            for module in fresh.modules():
                _without_init_marks(module)
                encoder._init_weights(module)
        layers[index].load_state_dict(fresh.state_dict())
    return chosen


def _without_init_marks(module: torch.nn.Module) -> None:
    """transformers skips tensors (and modules) it marked as already initialised (`_is_hf_initialized`, set when
    weights are loaded): clear the marks on this module's own tensors so `_init_weights` redraws them."""
    for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if getattr(tensor, "_is_hf_initialized", False):
            del tensor._is_hf_initialized
    if getattr(module, "_is_hf_initialized", False):
        del module._is_hf_initialized
