"""Tokenised sequences, length-bucketed batch plans, padding, and KTO's mismatched (KL) pairs.

The batch plan is a pure function of (seed, micro-batch index): resuming at micro-batch m replays
exactly the data order a straight run would have seen, with nothing to save but the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .data import Example
from .prefix_kl import shares_prompt
from .template import encode, encode_example

WINDOW_BATCHES = 16  # sort by length within windows of this many batches, then shuffle batch order


@dataclass
class Sequences:
    """Token ids and the completion start of each example (and of its KL partner, for KTO)."""

    ids: list[np.ndarray]
    starts: np.ndarray
    labels: np.ndarray  # bool, True = desirable
    kl_ids: list[np.ndarray] | None = None
    kl_starts: np.ndarray | None = None
    partners: np.ndarray | None = None  # KL partner index of each example
    kl_shared: np.ndarray | None = None  # bool: the KL pair starts with the example's own prompt (core.prefix_kl)
    truncated: int = 0  # examples whose prompt was cut to fit max_seq_len

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.ids), dtype=np.int64, count=len(self.ids))

    def set_kl_pairs(self, kl_ids: list[np.ndarray], kl_starts: np.ndarray, partners: np.ndarray | None = None) -> None:
        """Attach KTO's KL pairs (and note which start with their example's own prompt)."""
        self.kl_ids, self.kl_starts, self.partners = kl_ids, np.asarray(kl_starts, dtype=np.int64), partners
        self.kl_shared = np.array([shares_prompt(a, st, b, kst) for a, st, b, kst
                                   in zip(self.ids, self.starts, self.kl_ids, self.kl_starts)], dtype=bool)

    def trained_tokens(self, idx: np.ndarray) -> int:
        return int(sum(len(self.ids[i]) - self.starts[i] for i in idx))


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (Sattolo's algorithm: one n-cycle)."""
    rng = np.random.default_rng([seed, 7919])
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def tokenize(tokenizer, examples: list[Example], max_seq_len: int, kto: bool, seed: int) -> Sequences:
    """Encode examples; for KTO also each prompt with a fixed other example's completion (the KL pair)."""
    encoded = [encode_example(tokenizer, ex, max_seq_len) for ex in examples]
    seqs = Sequences(
        ids=[np.asarray(e.ids, dtype=np.int32) for e in encoded],
        starts=np.asarray([e.prompt_len for e in encoded], dtype=np.int64),
        labels=np.asarray([ex.label for ex in examples], dtype=bool),
        truncated=sum(1 for e in encoded if e.truncated_prompt_tokens or e.completion_too_long),
    )
    if kto and len(examples) >= 2:
        partners = derangement(len(examples), seed)
        kl = [encode(tokenizer, ex.prompt, examples[p].completion, max_seq_len) for ex, p in zip(examples, partners)]
        seqs.set_kl_pairs([np.asarray(e.ids, dtype=np.int32) for e in kl],
                          np.asarray([e.prompt_len for e in kl], dtype=np.int64), partners)
    return seqs


def pad(ids: list[np.ndarray], starts: np.ndarray, pad_to: int = 16, longest: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to one more than a multiple of `pad_to` (so model inputs are a multiple of it).

    `longest` widens the batch to at least that length (KTO pads examples and KL pairs alike, so a
    compiled step sees one shape per batch). Returns tokens [B, L] and the float32 target mask
    [B, L-1]: 1 where target t+1 is a completion token.
    """
    longest = max(longest, *(len(s) for s in ids))
    width = pad_to * -(-(longest - 1) // pad_to) + 1
    tokens = np.zeros((len(ids), width), dtype=np.int32)
    mask = np.zeros((len(ids), width - 1), dtype=np.float32)
    for b, (seq, start) in enumerate(zip(ids, starts)):
        tokens[b, : len(seq)] = seq
        mask[b, max(start - 1, 0) : len(seq) - 1] = 1.0
    return tokens, mask


def pack(ids: list[np.ndarray], starts: np.ndarray, pad_to: int = 16, longest: int = 0,
         k_min: int = 0, k_to: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded tokens plus the completion positions only: (tokens [B, L], positions [B, K], targets [B, K], mask [B, K]).

    positions[b, j] is the input position whose next token, targets[b, j], is the j-th trained token
    of sequence b; K is the longest completion rounded up to `k_to` (at least `k_min`). The loss then
    needs logits at B×K positions rather than B×L.
    """
    longest = max(longest, *(len(s) for s in ids))
    width = pad_to * -(-(longest - 1) // pad_to) + 1
    first = [max(int(st), 1) for st in starts]
    comp = [len(s) - f for s, f in zip(ids, first)]
    k = max(k_min, k_to * -(-max(max(comp), 1) // k_to))
    tokens = np.zeros((len(ids), width), dtype=np.int32)
    positions = np.zeros((len(ids), k), dtype=np.int32)
    targets = np.zeros((len(ids), k), dtype=np.int32)
    mask = np.zeros((len(ids), k), dtype=np.float32)
    for b, (seq, f, n) in enumerate(zip(ids, first, comp)):
        tokens[b, : len(seq)] = seq
        positions[b] = f - 1
        positions[b, :n] = np.arange(f - 1, f - 1 + n)
        targets[b, :n] = seq[f:]
        mask[b, :n] = 1.0
    return tokens, positions, targets, mask


class BatchPlan:
    """Deterministic micro-batches over epochs: `indices(m)` are the example indices of micro-batch m.

    SFT: length-bucketed batches of all examples. KTO: every batch holds both classes in the data's
    proportion (at least one of each when both exist), desirable and undesirable groups bucketed by
    length and paired long-with-long.
    """

    def __init__(self, lengths: np.ndarray, labels: np.ndarray | None, batch_size: int, seed: int) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        n = len(lengths)
        if n < batch_size:
            raise ValueError(f"only {n} training examples for a batch of {batch_size}; lower train.batch_size")
        if labels is not None and labels.all() != labels.any():
            n_u = int(np.clip(round(batch_size * (~labels).mean()), 1, batch_size - 1))
            self.groups = [(np.flatnonzero(labels), batch_size - n_u), (np.flatnonzero(~labels), n_u)]
        else:
            self.groups = [(np.arange(n), batch_size)]
        self.batches_per_epoch = min(len(idx) // k for idx, k in self.groups)
        self._epoch = lru_cache(maxsize=2)(self._plan)

    def _bucketed(self, idx: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
        perm = rng.permutation(idx)
        window = k * WINDOW_BATCHES
        out: list[np.ndarray] = []
        for w in range(0, len(perm), window):
            chunk = perm[w : w + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            out += [chunk[i : i + k] for i in range(0, len(chunk) - k + 1, k)]
        return out

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        per_group = []
        for idx, k in self.groups:
            groups = self._bucketed(idx, k, rng)[: self.batches_per_epoch]
            groups.sort(key=lambda g: int(self.lengths[g].max()))
            per_group.append(groups)
        batches = [np.concatenate(parts) for parts in zip(*per_group)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def indices(self, m: int) -> np.ndarray:
        epoch, i = divmod(m, self.batches_per_epoch)
        return self._epoch(epoch)[i]


def eval_batches(lengths: np.ndarray, batch_size: int, limit: int = 0) -> list[np.ndarray]:
    """Fixed validation batches, sorted by length (the last one may be smaller); `limit` > 0 caps them."""
    order = np.argsort(lengths, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if limit > 0 and len(batches) > limit:
        pick = np.linspace(0, len(batches) - 1, limit).round().astype(int)
        batches = [batches[i] for i in pick]
    return batches
