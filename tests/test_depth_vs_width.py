"""density_examples/depth_vs_width.py: its targets' normalisers and samples are right (its smoke
run is in test_density_examples.py)."""


import math
from pathlib import Path

import numpy as np
import torch

from script_runner import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "density_examples" / "depth_vs_width.py"




def test_target_normalisers_and_samples():
    dvw = load_script(SCRIPT)
    # The 8-Gaussian mixture's p̃ is 8 · 2πσ² times the normalised mixture.
    std = 0.5 / 1.414
    assert abs(dvw.log_normaliser("8gaussians") - math.log(8 * 2 * math.pi * std ** 2)) < 1e-6
    # Rejection samples of the ring follow p̃ / Z: their histogram matches the density.
    x = dvw.sample_target("ring", 100_000, seed=0)
    log_z = dvw.log_normaliser("ring")
    edges = np.linspace(-3.5, 3.5, 8)
    counts, _, _ = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=[edges, edges])
    fine = torch.linspace(-3.5, 3.5, 701, dtype=torch.float64)
    mid = (fine[1:] + fine[:-1]) / 2
    grid = torch.stack(torch.meshgrid(mid, mid, indexing="ij"), -1).reshape(-1, 2)
    density = (dvw.log_target("ring", grid) - log_z).exp().reshape(700, 700) * 0.01 ** 2
    expected = density.reshape(7, 100, 7, 100).sum((1, 3)).numpy() * len(x)
    big = expected > 500
    assert np.all(np.abs(counts[big] - expected[big]) < 5 * np.sqrt(expected[big]))
