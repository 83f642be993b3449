"""Tokenised sequences, length-bucketed batch plans, padding, and KTO's mismatched (KL) pairs.

The batch plan is a pure function of (seed, micro-batch index): resuming at micro-batch m replays
exactly the data order a straight run would have seen, with nothing to save but the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .data import Example
from .prefix_kl import shares_prompt
from .template import Encoded, encode_example, truncate

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
    trained: list[np.ndarray] | None = None  # SFT all_assistant: indices of every trained token (else from starts)

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
        if self.trained is not None:
            return int(sum(len(self.trained[i]) for i in idx))
        return int(sum(len(self.ids[i]) - self.starts[i] for i in idx))

    def trained_at(self, idx: np.ndarray) -> list[np.ndarray] | None:
        """The trained token indices of these examples, where they are not simply `starts` onwards."""
        return None if self.trained is None else [self.trained[i] for i in idx]


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (Sattolo's algorithm: one n-cycle)."""
    rng = np.random.default_rng([seed, 7919])
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def rotation(batches: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """KL partners as TRL's rotation: inside each batch, each example gets the previous example's completion
    (the first gets the last's), so a batch's KL completions are its own. Examples in no batch, or alone in
    one, keep a partner of `derangement` (never themselves)."""
    partners = derangement(n, seed)
    for b in batches:
        if len(b) > 1:
            partners[b] = np.roll(b, 1)
    return partners


Pairing = Callable[[Sequences], np.ndarray]  # the KL partner of each example, from its tokenised sequences


def tokenize(tokenizer, examples: list[Example], max_seq_len: int, kto: bool, seed: int,
             pairing: Pairing | None = None, string_format: str = "raw", train_on: str = "last") -> Sequences:
    """Encode examples; for KTO also each prompt with another example's completion (the KL pair): the
    partner `pairing` gives (default: a fixed derangement over the examples). `string_format` "raw" reads
    plain-string prompts as TRL does (see `encode_raw`)."""
    encoded = [_encode(tokenizer, ex, max_seq_len, string_format, "last" if kto else train_on) for ex in examples]
    seqs = Sequences(
        ids=[np.asarray(e.ids, dtype=np.int32) for e in encoded],
        starts=np.asarray([e.prompt_len for e in encoded], dtype=np.int64),
        labels=np.asarray([ex.label for ex in examples], dtype=bool),
        truncated=sum(1 for e in encoded if e.truncated_prompt_tokens or e.completion_too_long),
    )
    if any(e.earlier for e in encoded):  # SFT's all_assistant: earlier assistant turns are trained too
        seqs.trained = [np.flatnonzero(e.trained).astype(np.int64) for e in encoded]
    if kto and len(examples) >= 2:
        partners = pairing(seqs) if pairing else derangement(len(examples), seed)
        kl = [_kl_pair(tokenizer, ex, examples[p], max_seq_len, string_format) for ex, p in zip(examples, partners)]
        seqs.set_kl_pairs([np.asarray(e.ids, dtype=np.int32) for e in kl],
                          np.asarray([e.prompt_len for e in kl], dtype=np.int64), partners)
    return seqs


def _raw(ex: Example, string_format: str) -> bool:
    return string_format == "raw" and ex.text_prompt is not None


def _encode(tokenizer, ex: Example, max_seq_len: int, string_format: str, train_on: str = "last") -> Encoded:
    if _raw(ex, string_format):
        return encode_raw(tokenizer, ex.text_prompt, ex.completion, max_seq_len)
    return encode_example(tokenizer, ex, max_seq_len, train_on)


def _kl_pair(tokenizer, ex: Example, partner: Example, max_seq_len: int, string_format: str) -> Encoded:
    """`ex`'s prompt with `partner`'s completion; raw text pairs join token ids, as TRL does."""
    if not _raw(ex, string_format):
        return encode_example(tokenizer, ex, max_seq_len, partner=partner)
    own = encode_raw(tokenizer, ex.text_prompt, ex.completion)
    other = encode_raw(tokenizer, partner.text_prompt, partner.completion) if _raw(partner, string_format) \
        else encode_raw(tokenizer, "", partner.completion)
    prompt = own.ids[: own.prompt_len]
    completion = other.ids[other.prompt_len :]
    return truncate(Encoded(prompt + completion, len(prompt)), max_seq_len, getattr(tokenizer, "bos_token_id", None))


def encode_raw(tokenizer, prompt: str, completion: str, max_seq_len: int | None = None) -> Encoded:
    """TRL's reading of a plain-string record: `tokenizer(prompt)` and `tokenizer(prompt + completion + eos)`
    (special tokens added as the tokenizer does, e.g. a BOS; no chat template, no space between), the
    completion starting where the two diverge (trl.data_utils.common_prefix_length)."""
    eos = getattr(tokenizer, "eos_token", None) or ""
    text = completion if completion.endswith(eos) else completion + eos
    head = list(tokenizer.encode(prompt))
    full = list(tokenizer.encode(prompt + text))
    boundary = next((i for i, (a, b) in enumerate(zip(head, full)) if a != b), min(len(head), len(full)))
    return truncate(Encoded(full, boundary), max_seq_len, getattr(tokenizer, "bos_token_id", None))


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
         k_min: int = 0, k_to: int = 8, trained: list[np.ndarray] | None = None,
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded tokens plus the trained positions only: (tokens [B, L], positions [B, K], targets [B, K], mask [B, K]).

    positions[b, j] is the input position whose next token, targets[b, j], is the j-th trained token
    of sequence b: the tokens from `starts[b]` on, or the indices `trained[b]` where given (SFT's
    all_assistant); K is the most trained tokens of a sequence rounded up to `k_to` (at least `k_min`).
    The loss then needs logits at B×K positions rather than B×L.
    """
    longest = max(longest, *(len(s) for s in ids))
    width = pad_to * -(-(longest - 1) // pad_to) + 1
    if trained is None:
        picks = [np.arange(max(int(st), 1), len(s)) for s, st in zip(ids, starts)]
    else:
        picks = [t[t >= 1] for t in trained]
    k = max(k_min, k_to * -(-max(max(len(p) for p in picks), 1) // k_to))
    tokens = np.zeros((len(ids), width), dtype=np.int32)
    positions = np.zeros((len(ids), k), dtype=np.int32)
    targets = np.zeros((len(ids), k), dtype=np.int32)
    mask = np.zeros((len(ids), k), dtype=np.float32)
    for b, (seq, pick) in enumerate(zip(ids, picks)):
        n = len(pick)
        tokens[b, : len(seq)] = seq
        positions[b] = pick[0] - 1 if n else max(int(starts[b]), 1) - 1
        positions[b, :n] = pick - 1
        targets[b, :n] = seq[pick]
        mask[b, :n] = 1.0
    return tokens, positions, targets, mask


class BatchPlan:
    """Deterministic micro-batches over epochs: `indices(m)` are the example indices of micro-batch m.

    SFT: length-bucketed batches of all examples. KTO: every batch holds both classes in the data's
    proportion (at least one of each when both exist), desirable and undesirable groups bucketed by
    length and paired long-with-long.
    """

    def __init__(self, lengths: np.ndarray, labels: np.ndarray | None, batch_size: int, seed: int,
                 fixed: bool = False) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.fixed = fixed  # the same micro-batches every epoch (epoch 0's), in a new order each epoch
        n = len(lengths)
        if n < batch_size:
            raise ValueError(f"only {n} training examples for a batch of {batch_size}; lower train.batch_size")
        if labels is not None and labels.all() != labels.any():
            n_u = int(np.clip(round(batch_size * (~labels).mean()), 1, batch_size - 1))
            self.groups = [(np.flatnonzero(labels), batch_size - n_u), (np.flatnonzero(~labels), n_u)]
        else:
            n_u = 0
            self.groups = [(np.arange(n), batch_size)]
        self.undesirable_per_batch = n_u  # KTO: undesirable examples in every micro-batch (0: one class)
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

    def _composed(self, rng: np.random.Generator) -> list[np.ndarray]:
        per_group = []
        for idx, k in self.groups:
            groups = self._bucketed(idx, k, rng)[: self.batches_per_epoch]
            groups.sort(key=lambda g: int(self.lengths[g].max()))
            per_group.append(groups)
        return [np.concatenate(parts) for parts in zip(*per_group)]

    def batches(self) -> list[np.ndarray]:
        """The micro-batches of epoch 0, before their order is shuffled (with `fixed`: of every epoch)."""
        return self._composed(np.random.default_rng([self.seed, 0]))

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = self.batches() if self.fixed and epoch else self._composed(rng)
        return [batches[i] for i in rng.permutation(len(batches))]

    def indices(self, m: int) -> np.ndarray:
        epoch, i = divmod(m, self.batches_per_epoch)
        return self._epoch(epoch)[i]


def eval_batches(lengths: np.ndarray, batch_size: int, limit: int = 0,
                 labels: np.ndarray | None = None) -> list[np.ndarray]:
    """Fixed validation batches, sorted by length (the last one may be smaller); `limit` > 0 caps them.

    With `labels` (KTO) every batch holds both classes in the split's proportion, as training batches do:
    each class sorted by length is cut into as many near-equal runs as there are batches and the i-th runs
    of the two classes make batch i (long with long). So any subset of batches, as `limit` picks, has the
    split's mix, and validation numbers compare with training's.
    """
    order = np.argsort(lengths, kind="stable")
    if labels is None or labels.all() or not labels.any():
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        by_class = [order[labels[order]], order[~labels[order]]]
        n = -(-len(order) // batch_size)
        while sum(-(-len(c) // n) for c in by_class) > batch_size:  # the largest batch fits batch_size
            n += 1
        runs = [np.array_split(c, n) for c in by_class]
        batches = [np.concatenate([d, u]) for d, u in zip(*runs)]
    if limit > 0 and len(batches) > limit:
        pick = np.linspace(0, len(batches) - 1, limit).round().astype(int)
        batches = [batches[i] for i in pick]
    return batches
