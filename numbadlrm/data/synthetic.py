"""Built-in data: the reference's "random" mode and a Criteo-shaped "synthetic" mode.

random     (as dlrm_s_pytorch.py --data-generation=random, for benchmarks): dense features
           U[0, 1), row ids uniform per table, bag sizes fixed or uniform in
           [1, num_indices_per_lookup], labels uniformly random. Nothing to learn.

synthetic  Criteo-shaped data with signal. Dense features are log(1 + count) of
           heavy-tailed (log-normal) counts, like Criteo's I1..I13 after the reference
           transform. Row ids follow a power law per table (id = floor(n u^alpha), then a
           fixed bijective scramble so the hot rows are spread over the table). Labels are
           drawn from a fixed hidden logistic "teacher":
               logit = w . dense + sum_t a_t[id_t] + FM(u_t[id_t]) + bias
           with per-row effects a_t, per-row latent vectors u_t (k = 4) whose pairwise
           dot products (a factorisation machine) give the interaction op something to
           learn, and the bias set for a click rate near Criteo's 25%. The teacher
           depends only on (config, teacher_seed); a stream's samples on its own seed, so
           a held-out stream is fresh samples from the same distribution.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..batch import Batch
from ..config import DLRMConfig

LATENT = 4
POWER_ALPHA = 2.5  # id = floor(n * u**alpha): larger alpha, hotter head
BIAS = -1.6  # logit offset giving a ~25% positive rate


def bag_offsets(
    rng: np.random.Generator,
    num_tables: int,
    batch: int,
    lookups: int,
    fixed: bool,
    embedding_sizes: tuple[int, ...],
) -> np.ndarray:
    """(T, B+1) offsets; bag sizes = lookups, or uniform in [1, min(lookups, rows)]."""
    if fixed:
        counts = np.full((num_tables, batch), lookups, dtype=np.int64)
    else:
        cap = np.minimum(np.asarray(embedding_sizes, dtype=np.int64), lookups)[:, None]
        counts = 1 + (rng.random((num_tables, batch)) * cap).astype(np.int64)
        counts = np.minimum(counts, cap)
    flat = np.concatenate([[0], np.cumsum(counts.ravel())])
    offsets = np.empty((num_tables, batch + 1), dtype=np.int64)
    for t in range(num_tables):
        offsets[t] = flat[t * batch : (t + 1) * batch + 1]
    return offsets


def random_batch(
    rng: np.random.Generator, cfg: DLRMConfig, batch: int, lookups: int, fixed: bool
) -> Batch:
    offsets = bag_offsets(rng, cfg.num_tables, batch, lookups, fixed, cfg.embedding_sizes)
    indices = np.empty(offsets[-1, -1], dtype=np.int64)
    for t, rows in enumerate(cfg.embedding_sizes):
        lo, hi = offsets[t, 0], offsets[t, -1]
        indices[lo:hi] = rng.integers(0, rows, size=hi - lo)
    return Batch(
        dense=rng.random((batch, cfg.num_dense), dtype=np.float32),
        offsets=offsets,
        indices=indices,
        labels=rng.integers(0, 2, size=batch).astype(np.float32),
    )


class Teacher:
    """The hidden logistic model that labels synthetic samples (see the module docstring)."""

    def __init__(self, cfg: DLRMConfig, teacher_seed: int = 2024):
        rng = np.random.default_rng(np.random.SeedSequence(teacher_seed, spawn_key=(7,)))
        t = cfg.num_tables
        self.cfg = cfg
        self.dense_w = rng.normal(0.0, 0.6 / np.sqrt(cfg.num_dense), cfg.num_dense)
        self.dense_mu = rng.uniform(0.0, 3.0, cfg.num_dense)  # log-normal count scales
        scale = 1.2 / np.sqrt(t)
        self.effects = [rng.normal(0.0, scale, n).astype(np.float32) for n in cfg.embedding_sizes]
        self.latents = [
            rng.normal(0.0, 0.9 / np.sqrt(t), (n, LATENT)).astype(np.float32)
            for n in cfg.embedding_sizes
        ]
        # scramble id -> row with an affine bijection a*i + c mod n (gcd(a, n) = 1)
        self.scramble = []
        for n in cfg.embedding_sizes:
            a = int(rng.integers(1, max(n, 2)))
            while np.gcd(a, n) != 1:
                a += 1
            self.scramble.append((a, int(rng.integers(0, n))))

    def sample(self, rng: np.random.Generator, batch: int, lookups: int, fixed: bool) -> Batch:
        """Draw features, then labels ~ Bernoulli(sigmoid(teacher logit))."""
        cfg = self.cfg
        counts = np.exp(rng.normal(self.dense_mu, 1.2, (batch, cfg.num_dense)))
        counts[rng.random(counts.shape) < 0.2] = 0.0  # Criteo's frequent zeros
        dense = np.log1p(np.floor(counts)).astype(np.float32)
        offsets = bag_offsets(rng, cfg.num_tables, batch, lookups, fixed, cfg.embedding_sizes)
        indices = np.empty(offsets[-1, -1], dtype=np.int64)
        for t, rows in enumerate(cfg.embedding_sizes):
            lo, hi = offsets[t, 0], offsets[t, -1]
            raw = np.floor(rows * rng.random(hi - lo) ** POWER_ALPHA).astype(np.int64)
            a, c = self.scramble[t]
            indices[lo:hi] = (raw * a + c) % rows
        logit = self.logits(dense, offsets, indices)
        labels = (rng.random(batch) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return Batch(dense=dense, offsets=offsets, indices=indices, labels=labels)

    def logits(self, dense: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """The teacher's logit per sample (the Bayes-optimal score for its labels)."""
        batch = dense.shape[0]
        logit = BIAS + (dense - self.dense_mu) @ self.dense_w
        latent_sum = np.zeros((batch, LATENT))
        latent_sq = np.zeros(batch)
        for t in range(self.cfg.num_tables):
            ids = indices[offsets[t, 0] : offsets[t, -1]]
            bag = np.repeat(np.arange(batch), np.diff(offsets[t]))
            sizes = np.maximum(np.diff(offsets[t]), 1)
            logit += np.bincount(bag, self.effects[t][ids], minlength=batch) / sizes
            u = np.zeros((batch, LATENT))
            np.add.at(u, bag, self.latents[t][ids])
            u /= sizes[:, None]
            latent_sum += u
            latent_sq += (u * u).sum(axis=1)
        return logit + 0.5 * ((latent_sum * latent_sum).sum(axis=1) - latent_sq)  # FM pairs


def batch_stream(
    cfg: DLRMConfig,
    kind: str,
    num_batches: int,
    batch_size: int,
    seed: int,
    lookups: int = 1,
    fixed: bool = False,
    teacher: Teacher | None = None,
) -> Iterator[Batch]:
    """num_batches batches of kind "random" or "synthetic" from the stream ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
    if kind == "synthetic":
        teacher = teacher or Teacher(cfg)
        for _ in range(num_batches):
            yield teacher.sample(rng, batch_size, lookups, fixed)
    elif kind == "random":
        for _ in range(num_batches):
            yield random_batch(rng, cfg, batch_size, lookups, fixed)
    else:
        raise ValueError(f"data_generation: expected 'random' or 'synthetic', got {kind!r}")
