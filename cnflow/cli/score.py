"""``score``: print the mean log-likelihood of DATA's rows under a saved model (``--out``:
write each row's); a conditional model scores the targets in DATA given the features in
``--given``; an image model prints its bits/dim on a .npy/.npz file's images. An
unconditional model scores a .npy file memory-mapped, a batch of rows at a time."""

from __future__ import annotations

import argparse
import math

from ..estimators import ImageCNFDensity
from .arguments import CLIError
from .io import (
    check_width,
    load_model,
    load_table,
    model_columns,
    read_given,
    rows_file,
    write_rows,
)
from .reference import mean_and_se

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
    known = getattr(est, "feature_names_in_" if given is None else "target_names_", None)
    table = load_table(args.data, args.n_samples, args.seed, mapped=given is None,
                       header=args.header, columns=args.columns, dropna=args.dropna,
                       known=known)
    if given is None:
        X = model_columns(table, est, args.data)
        check_width(X, est, args.data)
        log_density = est.score_samples(X)
    else:
        names = getattr(est, "target_names_", None)
        X = model_columns(table, est, args.data, None if names is None else list(names))
        if X.shape[1] != est.n_targets_ or len(X) != len(given):
            raise CLIError(f"{args.data} must hold {len(given)} rows of {est.n_targets_} "
                           f"targets, one per row of {args.given}; got shape {X.shape}")
        log_density = est.score_samples(given, X)
    score = mean_and_se(log_density)
    print(f"mean log-likelihood {score['mean']:.6f} ± {score['se']:.6f} (standard error) over "
          f"{len(X)} rows of {args.data}")
    if args.out:
        print(f"wrote per-row log-densities to {write_rows(args.out, log_density)}")
