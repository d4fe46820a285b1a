"""Images: ImageCNFDensity's bits per dimension on scikit-learn's digits against the peers.

Digits are 1 × 8 × 8 images with 17 levels (pixel values 0..16); 75/25 split with
random_state=0, fixed seeds. Every model gets the same wall-clock budget (default 600 s) on
the same images, side by side in one run:

- ``image CNF``: ``ImageCNFDensity(levels=17, max_seconds=budget, random_state=0)`` (a
  multiscale CNF with convolutional fields);
- ``CNFDensity``: ``CNFDensity(max_seconds=budget, random_state=0)`` on the 64 flattened
  pixels plus U(0, 1) noise;
- ``zuko NSF``: ``zuko.flows.NSF(64, transforms=4, hidden_features=(256, 256))`` on the same
  dequantised pixels (standardised), Adam lr 1e-3, batch 128, 10 % held out for early
  stopping;
- ``GMM (CV)``: ``GaussianMixture`` on the same, n_components × covariance_type by 5-fold
  cross-validation.

Reported: test bits/dim = −mean log₂ p(x + u) / 64 with its standard error (the dequantised
bound on the discrete likelihood, in the units of pixel values 0..17; a uniform model gives
log₂ 17 = 4.09), seconds, iterations; and a grid of samples from each model beside real
digits. Writes bench_images.json, .md and bench_images_samples.png to --out.

Run: .venv/bin/python benchmarks/bench_images.py [--budget 600] [--models ...]; --quick: 5 s
budgets on 200 images, for the tests. Needs the benchmark extra (zuko). Never run it while
anything else runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from measure import fit_unconditional_flow

from cnflow import CNFDensity, ImageCNFDensity

MODELS = ("image CNF", "CNFDensity", "zuko NSF", "GMM (CV)")
LEVELS = 17


def load_digits_images(quick: bool = False):
    """(train, test) digits as (n, 1, 8, 8) integers 0..16, 75/25, random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images = load_digits().images.astype(np.int64)[:, None]
    train, test = train_test_split(images, test_size=0.25, random_state=0)
    return (train[:200], test[:100]) if quick else (train, test)


def _dequantised(images: np.ndarray, seed: int) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float64)
    return flat + np.random.RandomState(seed).uniform(size=flat.shape)


def fit_model(model: str, train: np.ndarray, budget: float, quick: bool,
              image_settings: dict | None = None):
    """A fitted model: (log-density scorer of integer test images in nats, sampler of integer
    images, iterations, note)."""
    if model == "image CNF":
        settings = dict(hidden=(16, 16), max_iter=20, rtol=1e-3, atol=1e-3) if quick else {}
        settings.update(image_settings or {})
        est = ImageCNFDensity(levels=LEVELS, max_seconds=budget, random_state=0,
                              **settings).fit(train)
        return est.score_samples, (lambda n: est.sample(n, random_state=0)), est.n_iter_, ""
    X = _dequantised(train, 0)
    if model == "CNFDensity":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = CNFDensity(max_seconds=budget, random_state=0).fit(X)

        def sample(n):
            return est.sample(n, random_state=0)
        return (lambda images: est.score_samples(_dequantised(images, 1)), sample,
                est.n_iter_, "")
    if model == "GMM (CV)":
        from sklearn.mixture import GaussianMixture
        from sklearn.model_selection import GridSearchCV

        search = GridSearchCV(GaussianMixture(reg_covar=1e-3, random_state=0),
                              {"n_components": [1, 2, 4, 8, 16],
                               "covariance_type": ["full", "diag"]}, cv=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search.fit(X)
        gmm = search.best_estimator_
        return (lambda images: gmm.score_samples(_dequantised(images, 1)),
                lambda n: gmm.sample(n)[0], 0, str(search.best_params_))
    return _fit_zuko(X, budget)


def _fit_zuko(X: np.ndarray, budget: float):
    import zuko

    torch.manual_seed(0)
    mean, scale = X.mean(0), X.std(0) + 1e-9
    log_jac = float(-np.log(scale).sum())
    U = torch.as_tensor((X - mean) / scale, dtype=torch.float32)
    perm = torch.as_tensor(np.random.RandomState(0).permutation(len(U)))
    n_val = max(1, len(U) // 10)
    U_val, U_train = U[perm[:n_val]], U[perm[n_val:]]
    flow = zuko.flows.NSF(X.shape[1], transforms=4, hidden_features=(256, 256))
    steps = fit_unconditional_flow(flow, U_train, U_val, budget, batch_size=128)

    def score(images):
        u = torch.as_tensor((_dequantised(images, 1) - mean) / scale, dtype=torch.float32)
        with torch.no_grad():
            return flow().log_prob(u).double().numpy() + log_jac

    def sample(n):
        with torch.no_grad():
            return flow().sample((n,)).double().numpy() * scale + mean
    return score, sample, steps, ""


def _as_images(draws: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(np.asarray(draws, dtype=np.float64)), 0, LEVELS - 1).reshape(
        -1, 8, 8)


def plot_samples(samples: dict[str, np.ndarray], real: np.ndarray, path: Path) -> None:
    """A grid: real test digits, then each model's samples, one row of 10 each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnflow.files import atomic_write

    rows = {"real digits": real.reshape(-1, 8, 8)[:10], **samples}
    fig, axes = plt.subplots(len(rows), 10, figsize=(8, 0.9 * len(rows) + 0.3))
    axes = np.atleast_2d(axes)
    for i, (name, images) in enumerate(rows.items()):
        for j in range(10):
            ax = axes[i, j]
            if j < len(images):
                ax.imshow(images[j], cmap="gray_r", vmin=0, vmax=LEVELS - 1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="5 s budgets on 200 images")
    parser.add_argument("--n-scales", type=int, help="the image CNF's n_scales (default: "
                        "its own default)")
    parser.add_argument("--max-iter", type=int, help="the image CNF's max_iter (default: its "
                        "own default)")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    budget = 5.0 if args.quick else args.budget
    train, test = load_digits_images(args.quick)
    dims = 64
    rows, samples = [], {}
    for model in args.models:
        started = time.perf_counter()
        image_settings = {k: v for k, v in (("n_scales", args.n_scales),
                                            ("max_iter", args.max_iter)) if v is not None}
        score, sample, iterations, note = fit_model(model, train, budget, args.quick,
                                                    image_settings)
        seconds = time.perf_counter() - started
        log_p = score(test)
        bpd = -log_p / (dims * math.log(2))
        row = {"model": model, "bits_per_dim": float(bpd.mean()),
               "bits_per_dim_se": float(bpd.std() / math.sqrt(len(bpd))),
               "seconds": seconds, "iterations": int(iterations), "note": note}
        rows.append(row)
        samples[model] = _as_images(sample(10))
        print(f"{model:12s} {row['bits_per_dim']:.3f} ± {row['bits_per_dim_se']:.3f} bits/dim"
              f"  {seconds:5.0f} s {iterations:6d} it {note}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_images_quick" if args.quick else "bench_images"
    plot_samples(samples, test, out / f"{stem}_samples.png")
    result = {"config": {"budget_seconds": budget, "train_images": len(train),
                         "test_images": len(test), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "machine": platform.platform(),
                         "date": time.strftime("%Y-%m-%d")}, "rows": rows}
    lines = ["| model | test bits/dim | seconds | iterations | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['bits_per_dim']:.3f} ± {r['bits_per_dim_se']:.3f} | "
              f"{r['seconds']:.0f} | {r['iterations']} | {r['note']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(text)
    return result


if __name__ == "__main__":
    main()
