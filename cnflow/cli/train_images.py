"""``train-images``: fit an ImageCNFDensity to the images of a .npy/.npz file; write
model.pt, samples.png (a grid of 64 samples) and summary.json (bits/dim on the training
images)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..estimators import ImageCNFDensity
from .arguments import CLIError, check_device, given_options
from .io import check_writable, checkpoint_path, write_summary

__all__ = ["run"]


def run(args: argparse.Namespace) -> None:
    """Run ``train-images`` with the parsed options (see ``python -m cnflow train-images
    --help``)."""
    from ..datasets import load_images
    from ..estimators.image import check_images
    from ..plotting import plot_image_grid

    check_device(args.device)
    out = check_writable(Path(args.out), folder=True)
    if not Path(args.data).is_file():
        raise CLIError(f"no such file: {args.data}")
    try:
        images = check_images(load_images(args.data, args.key), args.levels)
    except (ValueError, OSError) as err:
        raise CLIError(f"could not read images from {args.data}: {err}") from err
    given = given_options(n_scales=args.n_scales, max_iter=args.max_iter,
                          max_seconds=args.max_seconds, hidden=args.hidden,
                          checkpoint=checkpoint_path(args.checkpoint))
    est = ImageCNFDensity(levels=args.levels, device=args.device, random_state=args.seed,
                          verbose=not args.quiet, **given)
    print(f"training ImageCNFDensity on {args.data}: {len(images)} images of shape "
          f"{images.shape[1:]}, {args.levels} levels")
    start = time.perf_counter()
    est.fit(images)
    seconds = time.perf_counter() - start
    est.save(out / "model.pt")
    samples = est.sample(64, random_state=args.seed)
    plot_image_grid(samples, out / "samples.png", levels=args.levels,
                    title=f"ImageCNFDensity samples ({est.n_iter_} steps, {seconds:.0f} s)")
    summary = {"data": args.data, "images": int(len(images)), "shape": list(images.shape[1:]),
               "levels": args.levels, "iterations": est.n_iter_, "seconds": seconds,
               "train_bits_per_dim": est.bits_per_dim(images[:2000])}
    write_summary(out, summary)
    print(f"wrote {out / 'model.pt'}, {out / 'samples.png'}")
