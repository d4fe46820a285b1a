"""Trajectories: particles carried from the Gaussian base to the data by a trained CNF.

A CNF's samples are base draws z ~ N(0, I) integrated from t = T back to t = 0 along
dz/dt = f(z, t). Watching the particles in between shows what the flow learned: with flow
matching (straight conditional paths) they travel on nearly straight lines, and the density
forms as they converge. A CNFDensity is trained on pinwheel, then 5,000 base draws are
integrated with their states kept at 9 times (a strip of panels) and at 40 (an animation).
The states are shown in the data's units (the estimator standardises inside).

Writes FOLDER/trajectories.png (the strip) and trajectories.gif (the animation) (FOLDER:
density_examples/figures by default; *_quick.* with --quick, a smoke run).

Run: .venv/bin/python density_examples/trajectories.py [--quick] [--out FOLDER]
(about 1 minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cnflow import CNFDensity
from cnflow.datasets import make_toy
from cnflow.plotting import animate_trajectories, plot_trajectories

DATASET = "pinwheel"


def trajectories_in_data_units(est: CNFDensity, n: int, n_times: int,
                               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(times, states) of n base draws integrated from T to 0, states in the data's units."""
    flow = est.flow_
    reference = next(flow.parameters())
    generator = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, flow.dim, generator=generator, dtype=torch.float64)
    z = z.to(reference.device, reference.dtype)
    with torch.no_grad():
        times, states = flow.trajectory(z, n_times=n_times)
    scale = torch.as_tensor(est.scale_, dtype=states.dtype, device=states.device)
    mean = torch.as_tensor(est.mean_, dtype=states.dtype, device=states.device)
    return times.cpu(), (states * scale + mean).cpu()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, for the tests")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    if args.quick:
        n_train, max_iter, hidden, n_points, n_frames = 300, 5, (8,), 200, 4
    else:
        n_train, max_iter, hidden, n_points, n_frames = 20_000, 10_000, (64, 64, 64), 5000, 40
    X = make_toy(DATASET, n_train, random_state=0)
    start = time.perf_counter()
    # one CNF on per-column standardised rows (also in the smoke mode's few rows)
    est = CNFDensity(hidden=hidden, max_iter=max_iter, preprocessing="standardize",
                     validation_fraction=0.0, random_state=0, device="cpu").fit(X)
    print(f"trained on {DATASET} in {time.perf_counter() - start:.0f} s "
          f"({max_iter} flow-matching steps)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "trajectories" + ("_quick" if args.quick else "")
    times, states = trajectories_in_data_units(est, n_points, 9, seed=1)
    plot_trajectories(times, states, out / f"{stem}.png",
                      title=f"CNFDensity on {DATASET}: base (t = T) to data (t = 0)")
    times, states = trajectories_in_data_units(est, n_points, n_frames, seed=1)
    animate_trajectories(times, states, out / f"{stem}.gif",
                         title=f"CNFDensity on {DATASET}")
    print(f"wrote {out / stem}.png and {out / stem}.gif")


if __name__ == "__main__":
    main()
