"""Tokenised splits: tokenised once, stored compactly (flat int32 ids + offsets), padded per batch.

The flat layout travels through the Ray object store without copies (numpy arrays), and dynamic padding keeps each
batch only as long as its longest text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class TokenizedSplit:
    ids: np.ndarray  # int32, all texts' token ids concatenated
    offsets: np.ndarray  # int64, len n+1: text i is ids[offsets[i]:offsets[i+1]]
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # label column -> int64 array of len n

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, index: Sequence[int] | np.ndarray) -> "TokenizedSplit":
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate([self.ids[self.offsets[i] : self.offsets[i + 1]] for i in index]) if len(index) else (
            np.zeros(0, dtype=np.int32)
        )
        return TokenizedSplit(ids, offsets, {k: v[index] for k, v in self.labels.items()})

    def batch(self, index: Sequence[int] | np.ndarray, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask for these rows, padded to the longest of them."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(index) else 0
        input_ids = np.full((len(index), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(index), width), dtype=np.int64)
        for row, i in enumerate(index):
            n = lengths[row]
            input_ids[row, :n] = self.ids[self.offsets[i] : self.offsets[i] + n]
            mask[row, :n] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(mask)

    def eval_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Row indices in length-sorted batches, so little compute goes into padding."""
        order = np.argsort(self.lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def tokenize(texts: Sequence[str], labels: dict[str, np.ndarray], tokenizer, max_length: int) -> TokenizedSplit:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    lengths = np.fromiter((len(x) for x in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((t for x in encoded for t in x), dtype=np.int32, count=int(offsets[-1]))
    return TokenizedSplit(ids, offsets, {k: np.asarray(v, dtype=np.int64) for k, v in labels.items()})
