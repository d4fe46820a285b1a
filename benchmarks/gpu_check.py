"""GPU check: CUDA results against CPU for the same parameters, and a training step's time.

1. Agreement: the same CNF (64-64-64, exact trace, dopri5 at 1e-5) scores the same 4,096 rows
   on CPU and on CUDA in float32; the largest difference of log p must be within 1e-4 (the
   solvers take their own steps, so agreement is to the tolerance, not to the bit). Sampling
   from the same base draws is compared the same way, and a model fitted on CUDA is saved,
   loaded on CPU and scored there.
2. Speed: one maximum-likelihood training step (forward solve, adjoint backward, Adam) and one
   flow-matching step, on CPU and on CUDA, at batch sizes 512 to 16,384 (median of a few
   steps after a warm-up); the table gives seconds per step and the GPU's speed-up.

Run: .venv/bin/python benchmarks/gpu_check.py [--out docs] [--device cuda:1] (under 5 minutes
on one GPU; the CPU timings are the slow part, so --cpu-max-batch caps them). Writes
gpu_check.json and prints a Markdown table. Exits with a message when no CUDA device is
present. --device cpu --quick: a smoke run of the script on the CPU alone (the tests).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnflow import CNF, CNFDensity
from cnflow.datasets import make_toy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agreement(device: torch.device, fit_rows: int = 5000, fit_steps: int = 200) -> dict:
    """Largest |log p_cuda − log p_cpu| and |x_cuda − x_cpu| for the same parameters, and
    between a model fitted on ``device`` (``fit_steps`` steps on ``fit_rows`` rows) and its
    saved copy loaded on the CPU."""
    torch.manual_seed(0)
    flow = CNF(2)
    x = torch.as_tensor(make_toy("checkerboard", 4096, random_state=0), dtype=torch.float32)
    with torch.no_grad():
        cpu = flow.log_prob(x)
        gpu = flow.to(device).log_prob(x.to(device)).cpu()
        flow.cpu()
        z = torch.randn(1024, 2)
        sample_cpu = flow.transform(z, reverse=True)[0]
        sample_gpu = flow.to(device).transform(z.to(device), reverse=True)[0].cpu()
    est = CNFDensity(max_iter=fit_steps, device=str(device), random_state=0)
    X = make_toy("8gaussians", fit_rows, random_state=0)
    est.fit(X)
    with tempfile.TemporaryDirectory() as folder:
        est.save(Path(folder) / "model.pt")
        on_cpu = CNFDensity.load(Path(folder) / "model.pt", device="cpu")
        moved = float(np.abs(on_cpu.score_samples(X[:2000]) - est.score_samples(X[:2000])).max())
    return {"log_prob_max_abs_diff": float((gpu - cpu).abs().max()),
            "sample_max_abs_diff": float((sample_gpu - sample_cpu).abs().max()),
            "saved_on_cuda_scored_on_cpu_max_abs_diff": moved}


def step_seconds(device: torch.device, batch: int, objective: str, repeats: int) -> float:
    """Median seconds of one training step (after two warm-up steps)."""
    torch.manual_seed(0)
    flow = CNF(2).to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    data = torch.as_tensor(make_toy("checkerboard", batch, random_state=0),
                           dtype=torch.float32, device=device) / 2
    times = []
    for i in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        if objective == "maximum_likelihood":
            loss = -flow.log_prob(data).mean()
        else:
            loss = flow.flow_matching_loss(data)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs")
    parser.add_argument("--batches", type=int, nargs="+", default=[512, 2048, 8192, 16384])
    parser.add_argument("--cpu-max-batch", type=int, default=16384,
                        help="skip CPU timings above this batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda",
                        help="the device checked against the CPU (cpu: a smoke run of the "
                             "script itself, as the tests do)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (the tests): the model saved on the device is "
                             "fitted by 10 steps on 2,000 rows instead of 200 on 5,000")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (this script needs a GPU)")
        sys.exit(0)
    checks = agreement(device, *((2000, 10) if args.quick else (5000, 200)))
    print(json.dumps(checks, indent=1))
    rows = []
    for objective in ("maximum_likelihood", "flow_matching"):
        for batch in args.batches:
            gpu = step_seconds(device, batch, objective, args.repeats)
            cpu = (step_seconds(torch.device("cpu"), batch, objective, args.repeats)
                   if batch <= args.cpu_max_batch else None)
            rows.append({"objective": objective, "batch": batch, "cpu_seconds": cpu,
                         "gpu_seconds": gpu, "speedup": None if cpu is None else cpu / gpu})
            print(rows[-1], flush=True)
    lines = ["| objective | batch | CPU s/step | GPU s/step | GPU speed-up |",
             "|---|---|---|---|---|"]
    for r in rows:
        cpu = "–" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.4f}"
        speedup = "–" if r["speedup"] is None else f"{r['speedup']:.1f}×"
        lines.append(f"| {r['objective']} | {r['batch']} | {cpu} | {r['gpu_seconds']:.4f} | "
                     f"{speedup} |")
    print("\n".join(lines))
    ok = checks["log_prob_max_abs_diff"] <= 1e-4
    print(f"log_prob CUDA vs CPU: {'OK' if ok else 'FAILED'} "
          f"(max difference {checks['log_prob_max_abs_diff']:.2e}, limit 1e-4)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    result = {"config": {"torch": torch.__version__, "gpu": name,
                         "cpu_threads": torch.get_num_threads(), "machine": platform.platform()},
              "agreement": checks, "steps": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
