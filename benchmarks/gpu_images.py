"""Image CNF on a GPU: training-step time on 28 × 28 images at batch sizes 64 to 1024, on the
CPU and on a GPU when one is present, and a model trained on the GPU scored on the CPU.

For each device and batch size: the median seconds of a flow-matching step of the first
scale of ``MultiscaleImageCNF((1, 28, 28), n_scales=2)`` (convolutional fields of
``--hidden`` channels) after warm-up steps. Where CUDA is available, an ``ImageCNFDensity``
is fitted on the GPU for a few steps, saved, loaded on the CPU, and its scores compared with
the GPU's (they must agree to 1e-3 nats per image, float32).

Writes gpu_images.json to --out and prints a table.

Run: .venv/bin/python benchmarks/gpu_images.py [--batches 64 256 1024] [--steps 5];
--quick: tiny settings on the CPU, for the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnflow import ImageCNFDensity
from cnflow.flows import MultiscaleImageCNF
from cnflow.flows.image_transforms import dequantize, squeeze


def step_seconds(device: torch.device, batch: int, steps: int, hidden: tuple[int, ...],
                 size: int) -> float:
    """Median seconds of a flow-matching step of the first scale at this batch size."""
    torch.manual_seed(0)
    flow = MultiscaleImageCNF((1, size, size), n_scales=2, hidden=hidden).to(device)
    block = flow.blocks[0]
    optimizer = torch.optim.Adam(block.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 1, size, size), device=device)
    times = []
    for k in range(steps + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        y = dequantize(images, 256)
        h, _ = flow.logit.forward(y)
        loss = block.flow_matching_loss(squeeze(h).reshape(batch, -1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if k >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu_gpu_agreement(device: torch.device, size: int) -> dict:
    """Fit briefly on ``device``, save, load on the CPU; the largest score difference."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(128, 1, size, size))
    est = ImageCNFDensity(levels=256, hidden=(16, 16), max_iter=20, batch_size=64, rtol=1e-4,
                          atol=1e-4, random_state=0, device=str(device)).fit(images)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        est.save(path)
        on_cpu = ImageCNFDensity.load(path, device="cpu")
    here, there = est.score_samples(images[:16]), on_cpu.score_samples(images[:16])
    return {"device": str(device), "max_abs_difference": float(np.abs(here - there).max())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--quick", action="store_true", help="tiny settings on the CPU")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    size, hidden, batches, steps = 28, tuple(args.hidden), args.batches, args.steps
    if args.quick:
        size, hidden, batches, steps = 8, (8,), [16, 32], 1
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.quick:
        devices.append(torch.device("cuda"))
    rows = []
    for device in devices:
        for batch in batches:
            seconds = step_seconds(device, batch, steps, hidden, size)
            rows.append({"device": str(device), "batch": batch, "seconds_per_step": seconds})
            print(f"{device.type:5s} batch {batch:5d}: {seconds:.4f} s/step", flush=True)
    agreement = None
    if len(devices) > 1:
        agreement = cpu_gpu_agreement(devices[1], size)
        print(f"trained on {agreement['device']}, scored on cpu: max |Δ log p| = "
              f"{agreement['max_abs_difference']:.2e}")
    result = {"config": {"image_size": size, "hidden": list(hidden), "steps": steps,
                         "torch": torch.__version__, "machine": platform.platform(),
                         "cuda": torch.cuda.get_device_name(0) if len(devices) > 1 else None,
                         "date": time.strftime("%Y-%m-%d")},
              "steps": rows, "cpu_gpu_agreement": agreement}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_images_quick.json" if args.quick else "gpu_images.json"
    (out / name).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
