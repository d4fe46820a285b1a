"""Fixed-seed, fixed-step fits of every estimator, printed to the last digit.

Run before and after a change of the estimators' internals (no change of what they compute
intended) and compare the two outputs: any digit that differs is a change of behaviour. Every
fit is bounded by steps, never by seconds, on the CPU in float64 where the estimator allows it,
so two runs on one machine print the same text. Covered: ``CNFDensity`` in the small-table
regime, in the large regime and on a memory-mapped table; ``ConditionalCNFDensity``;
``PlanarFlowDensity``; ``ImageCNFDensity``; ``LatentODE``; and a save/load round trip of each
density estimator.

Usage::

    .venv/bin/python scripts/fingerprint.py > before.txt
    # ... change the code ...
    .venv/bin/python scripts/fingerprint.py | diff before.txt -
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from cnflow import CNFDensity, ConditionalCNFDensity, ImageCNFDensity, LatentODE, PlanarFlowDensity

torch.set_num_threads(1)


def digest(values) -> str:
    """The first 16 hex digits of the SHA-256 of the values as float64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()[:16]


def report(name: str, estimator, scores: np.ndarray, draws: np.ndarray | None,
           reloaded: np.ndarray | None = None) -> None:
    line = (f"{name:30s} n_iter={getattr(estimator, 'n_iter_', '-')!s:6s} "
            f"mean score={float(np.mean(scores))!r:24s} scores={digest(scores)}")
    if draws is not None:
        line += f" draws={digest(draws)}"
    if reloaded is not None:
        line += f" reloaded={'same' if np.array_equal(reloaded, scores) else digest(reloaded)}"
    print(line, flush=True)


def round_trip(estimator, X, *score_args) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.cnf"
        estimator.save(path)
        return type(estimator).load(path).score_samples(X, *score_args)


def tables() -> None:
    rng = np.random.RandomState(0)
    small = np.c_[rng.gamma(2.0, size=400), rng.randn(400)]
    small[:, 1] += 0.5 * small[:, 0]
    common = dict(max_iter=40, fine_tune_iter=4, dtype="float64", device="cpu", random_state=0)
    est = CNFDensity(**common).fit(small)
    scores = est.score_samples(small[:50])
    report("CNFDensity small", est, scores, est.sample(20, random_state=1),
           round_trip(est, small[:50]))

    large = np.c_[rng.poisson(3.0, 3000) + rng.rand(3000), rng.randn(3000), rng.rand(3000)]
    est = CNFDensity(regime="large", **common).fit(large)
    scores = est.score_samples(large[:50])
    report("CNFDensity large", est, scores, est.sample(20, random_state=1),
           round_trip(est, large[:50]))

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "table.npy"
        np.save(path, large)
        mapped = np.load(path, mmap_mode="r")
        est = CNFDensity(regime="large", **common).fit(mapped)
        scores = est.score_samples(mapped[:50])
        report("CNFDensity memory-mapped", est, scores, est.sample(20, random_state=1))
        # above 100,000 rows a memory-mapped table is sampled, never read whole
        path = Path(folder) / "wide.npy"
        np.save(path, np.c_[rng.gamma(2.0, size=120_000), rng.randn(120_000)])
        mapped = np.load(path, mmap_mode="r")
        est = CNFDensity(**common).fit(mapped)
        scores = est.score_samples(mapped[:50])
        report("CNFDensity memory-mapped 1e5+", est, scores, est.sample(20, random_state=1))

    X = rng.randn(500, 2)
    y = np.c_[X[:, 0] + 0.3 * rng.randn(500), np.sin(X[:, 1]) + 0.2 * rng.randn(500)]
    est = ConditionalCNFDensity(**common).fit(X, y)
    scores = est.score_samples(X[:50], y[:50])
    report("ConditionalCNFDensity", est, scores, est.sample(X[:5], 4, random_state=1),
           round_trip(est, X[:50], y[:50]))

    est = PlanarFlowDensity(n_layers=4, max_iter=30, dtype="float64", device="cpu",
                            random_state=0).fit(small)
    scores = est.score_samples(small[:50])
    report("PlanarFlowDensity", est, scores, est.sample(20, random_state=1),
           round_trip(est, small[:50]))


def images() -> None:
    from sklearn.datasets import load_digits

    X = load_digits().images.astype(np.int64)[:, None][:64]
    est = ImageCNFDensity(levels=17, n_scales=1, hidden=(8,), max_iter=4, batch_size=32,
                          rtol=1e-4, atol=1e-4, dtype="float64", device="cpu",
                          random_state=0).fit(X)
    scores = est.score_samples(X[:8])
    report("ImageCNFDensity", est, scores, est.sample(2, random_state=1),
           round_trip(est, X[:8]))


def series() -> None:
    rng = np.random.default_rng(0)
    data = []
    for _ in range(6):
        t = np.sort(rng.uniform(0.5, 4.0, int(rng.integers(4, 10))))
        data.append((t, np.sin(t + rng.uniform(0, 6))[:, None]))
    est = LatentODE(latent_dim=2, rec_hidden=8, ode_hidden=8, dec_hidden=8, max_iter=3,
                    batch_size=4, rtol=1e-8, atol=1e-8, dtype="float64", device="cpu",
                    random_state=0).fit(data)
    scores = est.elbo(data, n_samples=4, random_state=0)  # score() draws fresh noise
    report("LatentODE", est, scores, np.asarray(est.predict(data, np.linspace(0, 5, 6))))


if __name__ == "__main__":
    print(f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    tables()
    images()
    series()
