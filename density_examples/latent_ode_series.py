"""Latent ODE against a GRU on irregularly-sampled series: interpolation and extrapolation.

Chen et al. (2018, section 5) and Rubanova, Chen & Duvenaud (2019) propose the latent ODE for
time series observed at irregular times: a GRU run backwards over the observations gives
q(z_t0 | x), an ODE carries z through time, and a decoder reads x(t) off z(t) at any time,
so the model interpolates between observations and extrapolates past them. The claim to
test: it does both better than a recurrent network that has to model the gaps itself.

Data: 2-D damped spirals x(t) = e^(−0.1 t) (cos(t + φ), sin(t + φ)) with a random phase φ,
observed with Gaussian noise (σ = 0.05) at 6 to 20 random times of the grid 0, 0.2, ..., 6
(irregular: different times and numbers of observations in every series). Training series
are observed on [0, 6] only. On test series:

- interpolation: observe the series on [0, 6], predict at 20 random (off-grid) times between
  its first and last observation;
- extrapolation: from the same observations, predict at 30 times on (6, 12], where no
  training series was ever observed;

both scored by the mean squared error against the noise-free truth. The extrapolation is
also asked at a 4x finer grid of 120 times: the GRU's rollout depends on the times it is
asked for, the latent ODE's prediction at a time does not.

Models, with the same training budget (Adam, lr 1e-2 with cosine decay, the same number of
iterations and series per batch):

- ``LatentODE`` (cnflow.estimators.latent): latent size 4, 32 hidden units everywhere, dopri5 at
  rtol 1e-4, atol 1e-5, σ_obs = 0.1 (standardised units); predictions from the posterior mean.
- GRU baseline: a GRU cell reads (x_j, t_(j+1) − t_j), the gap to the time it must predict
  next, and a linear head predicts x_(j+1) (trained by teacher forcing on next-observation
  squared error). It interpolates at t* from the observations before t* (feeding the gap
  t* − t_k), and extrapolates by feeding back its own predictions. It uses only the past,
  where the latent ODE's encoder reads the whole observed window: that is the design
  difference the comparison is about.

Writes density_examples/figures/latent_ode_series.png (test series: observations, truth and
both models' predictions) and latent_ode_series.json (the MSEs, the training curves'
summaries, the settings), or *_quick.* with --quick.

Run: .venv/bin/python density_examples/latent_ode_series.py [--quick] [--out FOLDER]
(about 40 s with one CPU thread, --threads 1; --quick: seconds, for the tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnflow import LatentODE

T_OBS, T_END, GRID, NOISE, GAMMA = 6.0, 12.0, 0.2, 0.05, 0.1


def spiral(t: np.ndarray, phase: float) -> np.ndarray:
    """The noise-free spiral at times t: (len(t), 2)."""
    decay = np.exp(-GAMMA * t)[:, None]
    return decay * np.stack([np.cos(t + phase), np.sin(t + phase)], axis=1)


def make_series(n: int, rng: np.random.Generator) -> list[dict]:
    """n spirals, each observed with noise at 6 to 20 random grid times in [0, T_OBS]."""
    grid = np.arange(0, T_OBS + 1e-9, GRID)
    out = []
    for _ in range(n):
        k = int(rng.integers(6, 21))
        times = np.sort(rng.choice(grid, size=k, replace=False))
        phase = float(rng.uniform(0, 2 * np.pi))
        values = spiral(times, phase) + NOISE * rng.standard_normal((k, 2))
        out.append({"times": times, "values": values, "phase": phase})
    return out


class GRUBaseline(nn.Module):
    """h_j = GRU((x_j, Δ_j), h_(j−1)) with Δ_j the gap to the next wanted time; x̂ = W h + b."""

    def __init__(self, dim: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.cell = nn.GRUCell(dim + 1, hidden)
        self.head = nn.Linear(hidden, dim)
        self.hidden = hidden

    def states_before(self, times: torch.Tensor, values: torch.Tensor,
                      lengths: torch.Tensor) -> torch.Tensor:
        """h_(j−1), the state before observation j, for every j: (B, N, H) (teacher forcing)."""
        b, n, _ = values.shape
        h = values.new_zeros(b, self.hidden)
        before = []
        gaps = torch.diff(times, dim=1, append=times[:, -1:])
        for j in range(n):
            before.append(h)
            step = self.cell(torch.cat([values[:, j], gaps[:, j:j + 1]], -1), h)
            h = torch.where((j < lengths)[:, None], step, h)
        return torch.stack(before, 1)

    def loss(self, times, values, lengths) -> torch.Tensor:
        """Mean squared error of the next-observation predictions x̂_(j+1) = W h_j + b."""
        before = self.states_before(times, values, lengths)
        after = before[:, 1:]  # h_j for j = 1..N−1, which predict x_(j+1)
        mask = (torch.arange(1, values.shape[1])[None] < lengths[:, None]).float()
        err = (self.head(after) - values[:, 1:]).square().sum(-1)
        return (err * mask).sum() / (mask.sum() * values.shape[-1])

    @torch.no_grad()
    def interpolate(self, times: np.ndarray, values: np.ndarray,
                    queries: np.ndarray) -> np.ndarray:
        """Predictions at query times inside the window, from the observations before each."""
        t = torch.as_tensor(times, dtype=torch.float32)[None]
        x = torch.as_tensor(values, dtype=torch.float32)[None]
        before = self.states_before(t, x, torch.tensor([len(times)]))[0]
        k = np.searchsorted(times, queries, side="right") - 1  # last observation before t*
        gap = torch.as_tensor(queries - times[k], dtype=torch.float32)[:, None]
        h = self.cell(torch.cat([x[0, k], gap], -1), before[k])
        return self.head(h).numpy()

    @torch.no_grad()
    def extrapolate(self, times: np.ndarray, values: np.ndarray,
                    queries: np.ndarray) -> np.ndarray:
        """Predictions at increasing query times after the last observation, each fed back."""
        t = torch.as_tensor(times, dtype=torch.float32)[None]
        x = torch.as_tensor(values, dtype=torch.float32)[None]
        h = self.states_before(t, x, torch.tensor([len(times)]))[0, -1][None]
        last_t, last_x, out = float(times[-1]), x[0, -1][None], []
        for q in queries:
            h = self.cell(torch.cat([last_x, torch.tensor([[float(q) - last_t]])], -1), h)
            last_x, last_t = self.head(h), float(q)
            out.append(last_x[0])
        return torch.stack(out).numpy()


def fit_gru(train: list[dict], iterations: int, batch: int, lr: float, seed: int) -> tuple:
    torch.manual_seed(seed)
    model = GRUBaseline()
    n = max(len(s["times"]) for s in train)
    times = torch.zeros(len(train), n)
    values = torch.zeros(len(train), n, 2)
    lengths = torch.tensor([len(s["times"]) for s in train])
    for i, s in enumerate(train):
        k = len(s["times"])
        times[i, :k] = torch.as_tensor(s["times"])
        times[i, k:] = float(s["times"][-1])
        values[i, :k] = torch.as_tensor(s["values"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(iterations):
        idx = torch.randperm(len(train), generator=generator)[:batch]
        optimizer.zero_grad()
        loss = model.loss(times[idx], values[idx], lengths[idx])
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return model, losses


def make_tasks(test: list[dict], rng: np.random.Generator) -> list[dict]:
    """For each test series: 20 interpolation times in its window, 30 extrapolation times."""
    extrap = np.linspace(T_OBS + (T_END - T_OBS) / 30, T_END, 30)
    tasks = []
    for s in test:
        interp = np.sort(rng.uniform(s["times"][0], s["times"][-1], 20))
        tasks.append({"interp": interp, "extrap": extrap,
                      "interp_truth": spiral(interp, s["phase"]),
                      "extrap_truth": spiral(extrap, s["phase"])})
    return tasks


def plot(test: list[dict], curves: dict, path: Path, n_show: int = 3) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.3 * n_show, 5.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n_show, squeeze=False, sharex=True, sharey=True)
    dense = np.linspace(0, T_END, 241)
    for c in range(n_show):
        s = test[c]
        truth = spiral(dense, s["phase"])
        for r, coord in enumerate(("x₁", "x₂")):
            ax = axes[r, c]
            ax.axvspan(T_OBS, T_END, color="0.93")
            ax.plot(dense, truth[:, r], color="k", lw=1, ls="--", label="truth")
            ax.plot(s["times"], s["values"][:, r], "o", color="k", ms=3, label="observed")
            ax.plot(dense, curves["latent"][c][:, r], color="C0", lw=1.5, label="latent ODE")
            gru_t, gru_x = curves["gru"][c]
            ax.plot(gru_t, gru_x[:, r], color="C3", lw=1.2, label="GRU")
            ax.set_ylabel(coord, fontsize=8)
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(f"test series {c} ({len(s['times'])} observations)", fontsize=8)
            if r == 1:
                ax.set_xlabel("t (shaded: extrapolation)", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Adam steps per model (default 1000; 3 with --quick)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    iterations = args.iterations or (3 if args.quick else 1000)
    n_train, n_test = (16, 4) if args.quick else (1000, 100)
    batch, lr, seed = (8 if args.quick else 100), 1e-2, 0
    rng = np.random.default_rng(seed)
    train, test = make_series(n_train, rng), make_series(n_test, rng)
    tasks = make_tasks(test, rng)
    pairs = [(s["times"], s["values"]) for s in train]
    context = [(s["times"], s["values"]) for s in test]

    start = time.perf_counter()
    model = LatentODE(latent_dim=4, max_iter=iterations, batch_size=batch, lr=lr,
                      random_state=seed).fit(pairs)
    latent_seconds = time.perf_counter() - start
    print(f"latent ODE: {iterations} iterations in {latent_seconds:.1f} s, final loss "
          f"{np.mean([h['loss'] for h in model.history_[-20:]]):.3f}", flush=True)
    start = time.perf_counter()
    gru, gru_losses = fit_gru(train, iterations, batch, lr, seed)
    gru_seconds = time.perf_counter() - start
    print(f"GRU: {iterations} iterations in {gru_seconds:.1f} s, final loss "
          f"{np.mean(gru_losses[-20:]):.4f}", flush=True)

    interp_latent = model.predict(context, [t["interp"] for t in tasks])
    extrap_latent = model.predict(context, tasks[0]["extrap"])
    mse = {"latent_ode": {}, "gru": {}}
    truth_i = np.concatenate([t["interp_truth"] for t in tasks])
    truth_e = np.stack([t["extrap_truth"] for t in tasks])
    mse["latent_ode"]["interpolation"] = float(np.mean((np.concatenate(interp_latent)
                                                        - truth_i) ** 2))
    mse["latent_ode"]["extrapolation"] = float(np.mean((extrap_latent - truth_e) ** 2))
    interp_gru = [gru.interpolate(s["times"], s["values"], t["interp"])
                  for s, t in zip(test, tasks, strict=True)]
    extrap_gru = np.stack([gru.extrapolate(s["times"], s["values"], t["extrap"])
                           for s, t in zip(test, tasks, strict=True)])
    mse["gru"]["interpolation"] = float(np.mean((np.concatenate(interp_gru) - truth_i) ** 2))
    mse["gru"]["extrapolation"] = float(np.mean((extrap_gru - truth_e) ** 2))
    # The same extrapolation asked at a 4x finer grid of times: the latent ODE's answer at a
    # time does not depend on the other times asked for; the GRU's rollout does.
    fine = np.linspace(T_OBS + (T_END - T_OBS) / 120, T_END, 120)
    truth_f = np.stack([spiral(fine, s["phase"]) for s in test])
    mse["latent_ode"]["extrapolation_fine_grid"] = float(np.mean(
        (model.predict(context, fine) - truth_f) ** 2))
    mse["gru"]["extrapolation_fine_grid"] = float(np.mean((np.stack(
        [gru.extrapolate(s["times"], s["values"], fine) for s in test]) - truth_f) ** 2))
    # Reference: predicting 0 (the spirals' mean).
    mse["predict_zero"] = {"interpolation": float(np.mean(truth_i ** 2)),
                           "extrapolation": float(np.mean(truth_e ** 2))}
    elbo = float(model.score(context))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "latent_ode_series_quick" if args.quick else "latent_ode_series"
    dense = np.linspace(0, T_END, 241)
    n_show = min(3, n_test)
    curves = {"latent": list(model.predict(context[:n_show], dense)), "gru": []}
    for s in test[:n_show]:
        inside = dense[(dense > s["times"][0]) & (dense < s["times"][-1])]
        after = tasks[0]["extrap"]  # the rollout at the task's times (it depends on them)
        pred = np.concatenate([gru.interpolate(s["times"], s["values"], inside),
                               gru.extrapolate(s["times"], s["values"], after)])
        curves["gru"].append((np.concatenate([inside, after]), pred))
    plot(test, curves, out / f"{stem}.png", n_show)

    lines = ["| model | interpolation MSE | extrapolation MSE (30 times) | extrapolation MSE "
             "(120 times) | training time |",
             "|---|---|---|---|---|",
             f"| latent ODE | {mse['latent_ode']['interpolation']:.4f} | "
             f"{mse['latent_ode']['extrapolation']:.4f} | "
             f"{mse['latent_ode']['extrapolation_fine_grid']:.4f} | {latent_seconds:.0f} s |",
             f"| GRU | {mse['gru']['interpolation']:.4f} | {mse['gru']['extrapolation']:.4f} | "
             f"{mse['gru']['extrapolation_fine_grid']:.4f} | {gru_seconds:.0f} s |",
             f"| predict 0 | {mse['predict_zero']['interpolation']:.4f} | "
             f"{mse['predict_zero']['extrapolation']:.4f} | | |"]
    table = "\n".join(lines)
    print(table)
    print(f"latent ODE test ELBO {elbo:.2f} nats per series; observation noise variance "
          f"{NOISE ** 2:.4f} (an MSE against the truth below it beats the raw observations)")
    result = {
        "config": {"iterations": iterations, "batch": batch, "lr": lr, "n_train": n_train,
                   "n_test": n_test, "t_obs": T_OBS, "t_end": T_END, "grid": GRID,
                   "noise": NOISE, "gamma": GAMMA, "latent_dim": 4, "seed": seed,
                   "torch": torch.__version__, "threads": torch.get_num_threads()},
        "mse": mse,
        "latent_ode": {"seconds": latent_seconds, "test_elbo_per_series": elbo,
                       "loss_first": model.history_[0]["loss"],
                       "loss_last20": float(np.mean([h["loss"]
                                                     for h in model.history_[-20:]])),
                       "mean_nfe_forward": float(np.mean([h["nfe_forward"]
                                                          for h in model.history_]))},
        "gru": {"seconds": gru_seconds, "loss_first": gru_losses[0],
                "loss_last20": float(np.mean(gru_losses[-20:]))},
    }
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out / stem}.png, .json, .md")
    return result


if __name__ == "__main__":
    main()
