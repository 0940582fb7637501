"""Intervals and paired differences from per-sample verdicts.

A cell's verdicts are a ``seeds x rows`` 0/1 array: one row per test example (the same
examples, in the same order, for every method of a task), one line per seed. All
intervals are 95% percentile bootstrap intervals, resampling test rows and, where there
are several, seeds (a two-level bootstrap); a family average resamples each task's rows
on their own (stratified) and averages the tasks with equal weight, as the tables do.
Differences are paired: a resample draws the same rows for the method and for its
baseline. With one seed, a per-task difference is also tested with McNemar's exact test
(the binomial test on the discordant rows).

Every function takes an explicit random generator seed, so a report is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
#: what the tables' captions say about the intervals
INTERVAL_NOTE = ("95% percentile bootstrap interval over test rows (and over seeds where there are several; "
                 "family averages resample each task's rows separately)")


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval; ``p_value`` and ``test`` only for differences."""

    value: float
    low: float
    high: float
    n_rows: int
    n_seeds: int
    p_value: float | None = None
    test: str | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (differences), or the exact test rejects at 5% where it was run."""
        if self.p_value is not None:
            return self.p_value < 1 - CONFIDENCE
        return self.low > 0 or self.high < 0


def _as_matrix(verdicts) -> np.ndarray:
    matrix = np.asarray(verdicts, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"verdicts must be a non-empty seeds x rows array, got shape {matrix.shape}")
    return matrix


def _resample_means(matrices: list[np.ndarray], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Bootstrap means of each matrix on the same resampled rows and seeds: ``(len(matrices), resamples)``.

    The matrices share their row count (paired) and their seed count, or have one seed
    (a deterministic baseline, e.g. zero-shot CoT, is the same under every seed).
    """
    n_rows = matrices[0].shape[1]
    n_seeds = max(m.shape[0] for m in matrices)
    rows = rng.integers(0, n_rows, size=(resamples, n_rows))
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else None
    means = []
    for matrix in matrices:
        if seeds is None or matrix.shape[0] == 1:
            per_row = matrix.mean(axis=0)  # one seed, or the same verdicts under every seed
            means.append(per_row[rows].mean(axis=1))
        else:
            # for each resample: the drawn seeds' verdicts on the drawn rows
            picked = matrix[seeds[:, :, None], rows[:, None, :]]
            means.append(picked.mean(axis=(1, 2)))
    return np.stack(means)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def accuracy(verdicts, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """Accuracy of one cell with its interval."""
    matrix = _as_matrix(verdicts)
    samples = _resample_means([matrix], np.random.default_rng(seed), resamples)[0]
    return Estimate(float(matrix.mean()), *_interval(samples), n_rows=matrix.shape[1], n_seeds=matrix.shape[0])


def mcnemar_exact(method, baseline) -> float:
    """Two-sided p-value of McNemar's exact test on paired 0/1 verdicts of one seed."""
    method, baseline = np.asarray(method, dtype=bool), np.asarray(baseline, dtype=bool)
    only_method = int(np.sum(method & ~baseline))
    only_baseline = int(np.sum(~method & baseline))
    if only_method + only_baseline == 0:
        return 1.0
    return float(binomtest(only_method, only_method + only_baseline, 0.5).pvalue)


def paired_difference(method, baseline, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """Accuracy of ``method`` minus that of ``baseline`` on the same rows, with a paired interval.

    With one seed on each side, the p-value of McNemar's exact test comes with it.
    """
    method, baseline = _as_matrix(method), _as_matrix(baseline)
    _check_paired([method], [baseline])
    samples = np.subtract(*_resample_means([method, baseline], np.random.default_rng(seed), resamples))
    value = float(method.mean() - baseline.mean())
    if method.shape[0] == 1 and baseline.shape[0] == 1:
        return Estimate(value, *_interval(samples), n_rows=method.shape[1], n_seeds=1,
                        p_value=mcnemar_exact(method[0], baseline[0]), test="McNemar exact")
    return Estimate(value, *_interval(samples), n_rows=method.shape[1], n_seeds=max(method.shape[0], baseline.shape[0]))


def family_accuracy(per_task: list, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """Equal-weight average over tasks of each task's accuracy, each task's rows resampled on their own."""
    matrices = [_as_matrix(v) for v in per_task]
    rng = np.random.default_rng(seed)
    samples = np.mean([_resample_means([m], rng, resamples)[0] for m in matrices], axis=0)
    return Estimate(float(np.mean([m.mean() for m in matrices])), *_interval(samples),
                    n_rows=sum(m.shape[1] for m in matrices), n_seeds=max(m.shape[0] for m in matrices))


def family_difference(per_task: list[tuple], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """Equal-weight average over tasks of the paired (method - baseline) differences, stratified by task."""
    pairs = [(_as_matrix(m), _as_matrix(b)) for m, b in per_task]
    _check_paired([m for m, _ in pairs], [b for _, b in pairs])
    rng = np.random.default_rng(seed)
    samples = np.mean([np.subtract(*_resample_means([m, b], rng, resamples)) for m, b in pairs], axis=0)
    value = float(np.mean([m.mean() - b.mean() for m, b in pairs]))
    return Estimate(value, *_interval(samples), n_rows=sum(m.shape[1] for m, _ in pairs),
                    n_seeds=max(max(m.shape[0], b.shape[0]) for m, b in pairs))


def _check_paired(methods: list[np.ndarray], baselines: list[np.ndarray]) -> None:
    for method, baseline in zip(methods, baselines):
        if method.shape[1] != baseline.shape[1]:
            raise ValueError(f"paired verdicts need the same rows: {method.shape[1]} rows against {baseline.shape[1]}")
        if method.shape[0] > 1 and baseline.shape[0] > 1 and method.shape[0] != baseline.shape[0]:
            raise ValueError(f"paired verdicts need the same seeds: {method.shape[0]} against {baseline.shape[0]}")
