"""``score``: print the mean log-likelihood of DATA's rows under a saved model (``--out``:
write each row's); a conditional model scores the targets in DATA given the features in
``--given``; an image model prints its bits/dim on a .npy/.npz file's images. An
unconditional model scores a .npy file memory-mapped, a batch of rows at a time."""

from __future__ import annotations

import argparse
import math

from ..estimators import ImageCNFDensity
from .arguments import CLIError
from .io import check_width, load_model, load_rows, read_given, rows_file, write_rows

__all__ = ["run"]


def _score_images(args: argparse.Namespace, est: ImageCNFDensity) -> None:
    """``score`` for an image model: bits/dim of a .npy/.npz file's images,
    −mean log p / (D log 2) with D = C·H·W the values of one image."""
    from ..datasets import load_images

    try:
        images = load_images(args.data)
        log_density = est.score_samples(images)
    except (ValueError, OSError) as err:
        raise CLIError(f"could not score images from {args.data}: {err}") from err
    bits = -log_density.mean() / (math.prod(est.shape_) * math.log(2))
    print(f"mean log-likelihood bound {log_density.mean():.6f} nats per image, {bits:.4f} "
          f"bits/dim over {len(images)} images of {args.data}")
    if args.out:
        print(f"wrote per-image log-densities to {write_rows(args.out, log_density)}")


def run(args: argparse.Namespace) -> None:
    """Run ``score`` with the parsed options (see ``python -m cnflow score --help``)."""
    if args.out:
        rows_file(args.out)  # before the (slow) scoring
    est = load_model(args.model, args.device)
    if isinstance(est, ImageCNFDensity):
        _score_images(args, est)
        return
    given = read_given(args.given, est, args.model, args.seed)
    X = load_rows(args.data, args.n_samples, args.seed, mapped=given is None)
    if given is None:
        check_width(X, est, args.data)
        log_density = est.score_samples(X)
    else:
        if X.shape[1] != est.n_targets_ or len(X) != len(given):
            raise CLIError(f"{args.data} must hold {len(given)} rows of {est.n_targets_} "
                           f"targets, one per row of {args.given}; got shape {X.shape}")
        log_density = est.score_samples(given, X)
    print(f"mean log-likelihood {log_density.mean():.6f} over {len(X)} rows of {args.data}")
    if args.out:
        print(f"wrote per-row log-densities to {write_rows(args.out, log_density)}")
