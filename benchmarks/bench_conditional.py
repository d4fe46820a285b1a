"""Conditional densities p(y | x): ConditionalCNFDensity's defaults against the peers a user
would pick instead.

Every model gets the same wall-clock budget (default 120 s) on the same pairs, side by side in
one run, with fixed splits and seeds:

- synthetic data with an exact conditional density (``cnflow.datasets.make_conditional``:
  "bimodal", 1-D y bimodal and heteroscedastic in x; "bimodal_2d", 2-D y; 20,000 training
  pairs, 10,000 test pairs), where the conditional KL E_{x,y}[log p(y | x) − log q(y | x)] is
  estimated on the test pairs (paired, with its standard error);
- scikit-learn's diabetes (disease progression given the ten features) and digits halves (the
  bottom 32 pixels plus U(0, 1) noise given the top 32), 75/25 split, random_state=0.

Models:

- ``cnflow``: ``ConditionalCNFDensity(random_state=0, max_seconds=budget)``, nothing else set;
- ``cnflow + CNN`` (digits halves only): the same with ``embedding=DigitsCNN``, a small
  convolutional network trained with the flow that reads the top half as a (1, 4, 8) image
  (two 3×3 convolutions of 16 channels with SiLU, flattened, a linear layer to 16 context
  features); the features are then scaled by one global mean and scale, not per pixel;
- ``zuko NSF`` / ``zuko CNF``: zuko's conditional ``NSF`` (3 transforms, hidden (64, 64)) and
  ``CNF`` (hidden (64, 64, 64)) on standardised x and y, Adam lr 1e-3, batch 512, 10 % of the
  training pairs held out and scored every 50 steps, the best weights kept, stopped after 30
  scorings without improvement or at the budget;
- ``Gaussian MLP``: a heteroscedastic Gaussian, an MLP (64, 64, SiLU) from x to the mean and
  log-variance of each target, trained by its negative log-likelihood in the same loop;
- ``GMM joint``: ``GaussianMixture(covariance_type="full", reg_covar=1e-3)`` fitted to the
  standardised joint rows (x, y), n_components in {1, 2, 4, 8, 16, 32} chosen by the
  conditional log-likelihood of 20 % held-out pairs (then refitted on all), and conditioned
  exactly: p(y | x) = Σ_k π_k(x) N(y; μ_k(x), Σ_k).

Reported per model: test mean log p(y | x) in y's own units with its standard error, seconds
and iterations. Prints Markdown tables; writes bench_conditional.json and .md, and a picture
of sampled digit completions beside the true digits, to --out.

Run: .venv/bin/python benchmarks/bench_conditional.py [--budget 120] [--datasets ...]
(5 models × 4 data sets and the CNN on digits, each at most the budget: about 37 minutes at
the default on 2 CPU cores).
--quick: 1 s budgets on small data (2,000 synthetic pairs, the first 400 rows of a real data
set), for the tests. Needs the benchmark extra (zuko). Never run it while anything else runs.
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
from measure import adam_with_early_stopping, merge_rows

from cnflow import ConditionalCNFDensity
from cnflow.datasets import conditional_log_density, make_conditional

MODELS = ("cnflow", "zuko NSF", "zuko CNF", "Gaussian MLP", "GMM joint", "cnflow + CNN")
DATASETS = ("bimodal", "bimodal_2d", "diabetes", "digits halves")
#: Models that read the features as images, and the one data set they run on.
IMAGE_MODELS = {"cnflow + CNN": "digits halves"}
#: The shape of a row of the digits halves' features (the top half of a digit) as an image.
DIGIT_TOP_HALF = (1, 4, 8)


# ---------------------------------------------------------------- data
def load_pairs(name: str, quick: bool = False):
    """(X, y, X_test, y_test, log p(y_test | X_test) or None) of a data set."""
    from sklearn import datasets as skd
    from sklearn.model_selection import train_test_split

    if name in ("bimodal", "bimodal_2d"):
        n_train, n_test = (2000, 1000) if quick else (20_000, 10_000)
        X, y = make_conditional(name, n_train, random_state=0)
        X_test, y_test = make_conditional(name, n_test, random_state=1)
        return X, y, X_test, y_test, conditional_log_density(name, X_test, y_test)
    if name == "diabetes":
        data = skd.load_diabetes(scaled=False)
        X, y = data.data, data.target.astype(np.float64)
    elif name == "digits halves":
        pixels = skd.load_digits().data
        noise = np.random.RandomState(0).uniform(size=(len(pixels), 32))
        X, y = pixels[:, :32], pixels[:, 32:] + noise
    else:
        raise ValueError(f"unknown data set {name!r}")
    if quick:  # the first 400 rows (every digit is among them)
        X, y = X[:400], y[:400]
    X, X_test, y, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    return X, y, X_test, y_test, None


def _columns(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1)


class _Standardised:
    """Per-column standardisation of x and y (y's log-Jacobian added back to densities)."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        Y = _columns(y)
        self.x_mean, self.x_scale = X.mean(0), np.where(X.std(0) > 0, X.std(0), 1.0)
        self.y_mean, self.y_scale = Y.mean(0), np.where(Y.std(0) > 0, Y.std(0), 1.0)
        self.log_jac = float(-np.log(self.y_scale).sum())

    def x(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((X - self.x_mean) / self.x_scale, dtype=torch.float32)

    def y(self, y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((_columns(y) - self.y_mean) / self.y_scale,
                               dtype=torch.float32)


# ---------------------------------------------------------------- peers
class _GaussianMLP(torch.nn.Module):
    """x ↦ (mean, log-variance) of each target; log N(y; mean, diag(exp(logvar)))."""

    def __init__(self, n_features: int, n_targets: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
            torch.nn.SiLU(), torch.nn.Linear(64, 2 * n_targets))

    def log_prob(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.net(x).chunk(2, dim=-1)
        return (-0.5 * ((y - mean) ** 2 / log_var.exp() + log_var + math.log(2 * math.pi))
                ).sum(-1)


def fit_torch_peer(model: str, X: np.ndarray, y: np.ndarray, budget: float, seed: int = 0):
    """zuko's conditional NSF or CNF, or the Gaussian MLP, by Adam with early stopping on
    10 % held-out pairs; a scorer log p(y | x)."""
    import zuko

    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    scale = _Standardised(X, y)
    C, Y = scale.x(X), scale.y(y)
    perm = torch.as_tensor(rng.permutation(len(Y)))
    n_val = max(1, int(round(0.1 * len(Y))))
    val, train = perm[:n_val], perm[n_val:]
    if model == "zuko NSF":
        flow = zuko.flows.NSF(Y.shape[1], C.shape[1], transforms=3, hidden_features=(64, 64))

        def log_prob(targets, context):
            return flow(context).log_prob(targets)
    elif model == "zuko CNF":
        flow = zuko.flows.CNF(Y.shape[1], C.shape[1], hidden_features=(64, 64, 64))

        def log_prob(targets, context):
            return flow(context).log_prob(targets)
    else:
        flow = _GaussianMLP(C.shape[1], Y.shape[1])
        log_prob = flow.log_prob

    def val_nll() -> float:
        with torch.no_grad():
            return float(-log_prob(Y[val], C[val]).mean())

    def batch_nll(rows: torch.Tensor) -> torch.Tensor:
        batch = train[rows]
        return -log_prob(Y[batch], C[batch]).mean()

    steps = adam_with_early_stopping(flow, batch_nll, len(train), val_nll, budget,
                                     batch_size=512)

    def score(X_new: np.ndarray, y_new: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = [log_prob(scale.y(y_new[i:i + 4096]), scale.x(X_new[i:i + 4096]))
                   for i in range(0, len(X_new), 4096)]
        return torch.cat(out).double().numpy() + scale.log_jac
    return score, steps, ""


def conditional_gmm_log_prob(gmm, n_features: int, X: np.ndarray, Y: np.ndarray
                             ) -> np.ndarray:
    """log p(y | x) of a full-covariance GaussianMixture fitted to rows [x, y]:
    log Σ_k π_k(x) N(y; μ_y,k + Σ_yx Σ_xx⁻¹ (x − μ_x,k), Σ_yy − Σ_yx Σ_xx⁻¹ Σ_xy)."""
    from scipy.special import logsumexp

    d = n_features
    log_joint_x, log_cond = [], []
    for weight, mean, cov in zip(gmm.weights_, gmm.means_, gmm.covariances_, strict=True):
        Sxx, Sxy, Syy = cov[:d, :d], cov[:d, d:], cov[d:, d:]
        gain = np.linalg.solve(Sxx, Sxy).T  # Σ_yx Σ_xx⁻¹
        cond_mean = mean[d:] + (X - mean[:d]) @ gain.T
        cond_cov = Syy - gain @ Sxy
        log_joint_x.append(math.log(weight) + _log_normal(X, mean[:d], Sxx))
        log_cond.append(_log_normal(Y - cond_mean, np.zeros(Y.shape[1]), cond_cov))
    log_px = np.stack(log_joint_x)
    log_w = log_px - logsumexp(log_px, axis=0)
    return logsumexp(log_w + np.stack(log_cond), axis=0)


def _log_normal(Z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov)
    r = np.linalg.solve(chol, (Z - mean).T).T
    return (-0.5 * (r * r).sum(1) - np.log(np.diag(chol)).sum()
            - 0.5 * Z.shape[1] * math.log(2 * math.pi))


def fit_gmm(model: str, X: np.ndarray, y: np.ndarray, budget: float, seed: int = 0):
    """A Gaussian mixture on the joint rows, n_components by held-out conditional
    likelihood, conditioned exactly; a scorer."""
    from sklearn.mixture import GaussianMixture

    scale = _Standardised(X, y)
    C, Y = scale.x(X).double().numpy(), scale.y(y).double().numpy()
    rows = np.random.RandomState(seed).permutation(len(C))
    n_val = max(1, int(round(0.2 * len(C))))
    val, train = rows[:n_val], rows[n_val:]
    best, best_k = -np.inf, 1
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in (1, 2, 4, 8, 16, 32):
            if k > len(train) // 2 or time.perf_counter() - started > budget:
                break
            gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-3,
                                  random_state=seed).fit(np.hstack([C[train], Y[train]]))
            value = conditional_gmm_log_prob(gmm, C.shape[1], C[val], Y[val]).mean()
            if value > best:
                best, best_k = value, k
        gmm = GaussianMixture(best_k, covariance_type="full", reg_covar=1e-3,
                              random_state=seed).fit(np.hstack([C, Y]))

    def score(X_new: np.ndarray, y_new: np.ndarray) -> np.ndarray:
        return conditional_gmm_log_prob(gmm, C.shape[1], scale.x(X_new).double().numpy(),
                                        scale.y(y_new).double().numpy()) + scale.log_jac
    return score, 0, f"{best_k} components"


def fit_cnflow(model: str, X: np.ndarray, y: np.ndarray, budget: float, seed: int = 0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = ConditionalCNFDensity(random_state=seed, max_seconds=budget).fit(X, y)
    return est.score_samples, est.n_iter_, "", est


class DigitsCNN(torch.nn.Module):
    """The top half of a digit, (n, 1, 4, 8), to a context of 16 features: two 3×3
    convolutions of 16 channels with SiLU, flattened (the position of a stroke matters), and
    a linear layer."""

    out_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.convolutions = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.SiLU())
        self.out = torch.nn.Linear(16 * math.prod(DIGIT_TOP_HALF[1:]), self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.convolutions(x).flatten(1))


def fit_cnflow_cnn(model: str, X: np.ndarray, y: np.ndarray, budget: float, seed: int = 0):
    """ConditionalCNFDensity with the DigitsCNN embedding over the top halves as images."""
    def images(rows: np.ndarray) -> np.ndarray:
        return rows.reshape(len(rows), *DIGIT_TOP_HALF)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = ConditionalCNFDensity(embedding=DigitsCNN, random_state=seed,
                                    max_seconds=budget).fit(images(X), y)

    def score(X_new: np.ndarray, y_new: np.ndarray) -> np.ndarray:
        return est.score_samples(images(X_new), y_new)
    return score, est.n_iter_, ""


def run_model(model: str, data: tuple, budget: float) -> tuple[dict, object]:
    X, y, X_test, y_test, log_p_test = data
    fit = (fit_cnflow if model == "cnflow" else fit_cnflow_cnn if model == "cnflow + CNN"
           else fit_gmm if model == "GMM joint" else fit_torch_peer)
    started = time.perf_counter()
    fitted = fit(model, X, y, budget)
    seconds = time.perf_counter() - started
    score, iterations, note = fitted[:3]
    test = score(X_test, y_test)
    row = {"model": model, "iterations": int(iterations), "seconds": seconds,
           "test_ll": float(test.mean()), "test_se": float(test.std() / math.sqrt(len(test))),
           "note": note}
    if log_p_test is not None:
        gap = log_p_test - test
        row["kl"] = float(gap.mean())
        row["kl_se"] = float(gap.std() / math.sqrt(len(gap)))
    return row, (fitted[3] if len(fitted) > 3 else None)


# ---------------------------------------------------------------- picture
def plot_completions(est, X_test: np.ndarray, y_test: np.ndarray, path: Path,
                     n_digits: int = 8, n_draws: int = 3) -> None:
    """True digits (top row) and completions of their bottom halves drawn by the model given
    the top halves (the rows below)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnflow.files import atomic_write

    draws = est.sample(X_test[:n_digits], n_samples=n_draws, random_state=0)
    fig, axes = plt.subplots(1 + n_draws, n_digits, figsize=(n_digits * 0.9,
                                                             (1 + n_draws) * 0.95))
    for j in range(n_digits):
        images = [np.concatenate([X_test[j], y_test[j] - 0.5])]
        images += [np.concatenate([X_test[j], draws[j, r]]) for r in range(n_draws)]
        for i, image in enumerate(images):
            ax = axes[i, j]
            ax.imshow(np.clip(image, 0, 16).reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
            ax.axhline(3.5, color="tab:red", linewidth=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title("true" if j == 0 else "", fontsize=7)
    axes[1, 0].set_ylabel("drawn", fontsize=7)
    fig.suptitle("digits: bottom halves drawn given the top halves (above the red line)",
                 fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)


# ---------------------------------------------------------------- tables
def markdown(result: dict) -> str:
    lines = ["| data (train pairs, dim x → dim y) | model | test log p(y \\| x) | KL | seconds "
             "| iterations | note |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        kl = f"{row['kl']:.4f} ± {row['kl_se']:.4f}" if "kl" in row else ""
        lines.append(f"| {row['data']} ({row['n_train']}, {row['x_dim']} → {row['y_dim']}) | "
                     f"{row['model']} | {row['test_ll']:.3f} ± {row['test_se']:.3f} | {kl} | "
                     f"{row['seconds']:.0f} | {row['iterations']} | {row['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per model")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                        help="models to run (the CNN only on digits halves)")
    parser.add_argument("--quick", action="store_true", help="1 s budgets on small data")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    budget = 1.0 if args.quick else args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_conditional_quick" if args.quick else "bench_conditional"
    rows = []
    for name in args.datasets:
        data = load_pairs(name, quick=args.quick)
        for model in args.models:
            if model in IMAGE_MODELS and IMAGE_MODELS[model] != name:
                continue
            row, est = run_model(model, data, budget)
            row = {"data": name, "n_train": len(data[0]), "x_dim": data[0].shape[1],
                   "y_dim": _columns(data[1]).shape[1], **row}
            rows.append(row)
            kl = f"  KL {row['kl']:.4f} ± {row['kl_se']:.4f}" if "kl" in row else ""
            print(f"{name:14s} {model:12s} test {row['test_ll']:9.3f} ± {row['test_se']:.3f}"
                  f"{kl}  {row['seconds']:5.0f} s {row['iterations']:6d} it {row['note']}",
                  flush=True)
            if est is not None and name == "digits halves" and model == "cnflow":
                plot_completions(est, data[2], data[3], out / f"{stem}_digits.png")
    result = {"config": {"budget_seconds": budget, "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "machine": platform.platform(),
                         "date": time.strftime("%Y-%m-%d")}, "rows": rows}
    previous = out / f"{stem}.json"
    if previous.exists() and not args.quick:  # a partial run keeps the other rows
        result["rows"] = merge_rows(json.loads(previous.read_text())["rows"], rows)
    text = markdown(result)
    print(text)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(text)
    print(f"wrote {out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
