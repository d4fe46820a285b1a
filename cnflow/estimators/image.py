r"""Density estimation for integer images: :class:`ImageCNFDensity`, bits per dimension."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..checks import check_finite_array, check_positive_int
from ..flows.image import MultiscaleImageCNF
from ..flows.image_transforms import bits_per_dim, dequantize, squeeze
from ..ode.options import check_steps
from ..training import (
    FitCheckpoint,
    TrainConfig,
    TrainResult,
    resolve_device,
    train,
)
from ..training.checkpoint import data_digest
from ..training.stages import Stage, StagedFit, StageRun
from .estimator_base import DTYPES, EstimatorBase
from .fitting.persistence import load_fitted, save_fitted
from .fitting.run import draw_seed, finish_fit, forget_fitted, run_stages
from .params import Boolean, InstanceOf, Integer, IntegerSequence, Options, Real

__all__ = ["ImageCNFDensity", "check_images"]

_FORMAT = "cnflow-image-estimator/1"


def check_images(X, levels: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """X as an (n, C, H, W) int64 array of values in {0, …, levels − 1} ((n, H, W) is read
    as one channel); a ValueError naming what is wrong otherwise."""
    X = np.asarray(X)
    if X.ndim == 3:
        X = X[:, None]
    if X.ndim != 4 or X.shape[0] < 1:
        raise ValueError(f"images must have shape (n, C, H, W) or (n, H, W), got {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"images must be numbers, got dtype {X.dtype}")
    check_finite_array(X, "the image array")
    if (X != np.round(X)).any() or X.min() < 0 or X.max() > levels - 1:
        raise ValueError(f"pixel values must be integers from 0 to levels − 1 = {levels - 1}; "
                         f"got values from {X.min()} to {X.max()}")
    if shape is not None and tuple(X.shape[1:]) != tuple(shape):
        raise ValueError(f"images of shape {tuple(X.shape[1:])}; the model was fitted on "
                         f"{tuple(shape)}")
    return X.astype(np.int64)


class ImageCNFDensity(EstimatorBase):
    r"""The density of integer images by a multiscale CNF, with bits per dimension.

    Pixels x ∈ {0, …, L − 1} are dequantised, y = (x + u)/L with u ~ U(0, 1)^D, and y is
    modelled by :class:`cnflow.flows.MultiscaleImageCNF` (logit, squeeze, CNF blocks with
    convolutional fields, factor-out). By Jensen's inequality the dequantised density bounds
    the discrete likelihood: log P(x) ≥ E_u[log p((x + u)/L)] − D log L (Theis et al. 2016),
    which :meth:`score_samples` returns (one draw of u, seeded) and :meth:`bits_per_dim`
    reports as −log₂ P(x)/D.

    Training is by flow matching, scale by scale: block s regresses its field on straight
    paths from its own inputs (the dequantised images carried through the logit and the
    blocks before it, whose solves are made at ``fine_tune_tol``) to N(0, I); with several
    scales the time budget and the steps are shared equally between them. Scoring solves
    every block with the exact trace.

    Arguments:
        levels: the number of pixel values L (256 for 8-bit images, 17 for scikit-learn's
            digits).
        n_scales: scales of the multiscale flow (H and W divisible by 2^n_scales). Each
            later scale's flow-matching step first solves the blocks before it, so on a CPU
            it costs tens of first-scale steps (``docs/benchmarks.md``, "Images"). Default 1.
        max_iter: flow-matching steps per scale (default 30,000; with ``max_seconds`` the
            budget usually ends the fit first).
        hidden: channels of each block's hidden convolutions.
        alpha: the logit transform's margin.
        batch_size, lr, lr_schedule, weight_decay, max_seconds: the Adam loop (a cosine
            schedule anneals over max_iter or max_seconds, whichever ends first).
        time_exponent: flow matching's γ (see :meth:`cnflow.CNF.flow_matching_loss`).
        method, rtol, atol: the solves of scoring and sampling.
        fine_tune_tol: rtol = atol of the solves that carry training images to later scales.
        dtype, device, random_state, verbose: as :class:`cnflow.CNFDensity`.
        checkpoint, checkpoint_interval: as :class:`cnflow.CNFDensity`: the fit's state is
            written to that file while training and a fit of the same parameters and images
            continues from it.

    Attributes:
        flow_: the fitted :class:`cnflow.flows.MultiscaleImageCNF`.
        shape_: (C, H, W) of the images.
        settings_: the fit's settings (:class:`cnflow.estimators.policy.FitSettings`; saved
            with the model).
        history_, n_iter_ (all scales), device_.

    Example:
        >>> import numpy as np
        >>> from cnflow import ImageCNFDensity
        >>> X = np.random.default_rng(0).integers(0, 4, size=(64, 1, 4, 4))
        >>> est = ImageCNFDensity(levels=4, n_scales=1, hidden=(8,), max_iter=5,
        ...                       rtol=1e-3, atol=1e-3, random_state=0).fit(X)
        >>> est.score_samples(X[:2]).shape, est.sample(3, random_state=0).shape
        ((2,), (3, 1, 4, 4))
    """

    _policy_kind = "ImageCNFDensity"

    def __init__(self, levels=256, n_scales=1, hidden=(64, 64, 64), alpha=1e-6, max_iter=30000,
                 batch_size=256, lr=1e-3, lr_schedule="cosine", weight_decay=0.0,
                 time_exponent=1.0, method="dopri5", rtol=1e-5, atol=1e-5, fine_tune_tol=1e-3,
                 max_seconds=None, dtype="float32", device="auto", random_state=None,
                 verbose=False, checkpoint=None, checkpoint_interval=60.0):
        self.levels = levels
        self.n_scales = n_scales
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.time_exponent = time_exponent
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.fine_tune_tol = fine_tune_tol
        self.max_seconds = max_seconds
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval

    _parameter_kinds = {
        "levels": [Integer(2)],
        "n_scales": [Integer(1)],
        "hidden": [IntegerSequence(1)],
        "alpha": [Real(0, 0.5, closed="left")],
        "max_iter": [Integer(1)],
        "batch_size": [Integer(1)],
        "lr": [Real(0, None)],
        "lr_schedule": [Options("constant", "cosine")],
        "weight_decay": [Real(0, None, closed="left")],
        "time_exponent": [Real(0, None)],
        "method": [Options("dopri5", "bosh3", "euler", "midpoint", "rk4")],
        "rtol": [Real(0, None)],
        "atol": [Real(0, None)],
        "fine_tune_tol": [Real(0, None)],
        "max_seconds": [None, Real(0, None)],
        "dtype": [Options(*DTYPES)],
        "device": [InstanceOf(str, torch.device)],
        "verbose": [Boolean(), Integer(0)],
        "checkpoint": [None, InstanceOf(str, os.PathLike)],
        "checkpoint_interval": [Real(0, None, closed="left")],
    }

    def _solve_options(self, tolerance: float | None = None) -> dict:
        tol = {} if tolerance is None else {"rtol": tolerance, "atol": tolerance}
        return {"solve_options": self.flow_.blocks[0].solve_options.replace(**tol)}

    def fit(self, X, y=None):
        """Fit to integer images X (n, C, H, W) (or (n, H, W)) with values in
        {0, …, levels − 1}.

        Returns:
            self
        """
        self._validate_parameters()
        forget_fitted(self, ("flow_", "history_", "n_iter_", "shape_", "device_", "settings_"))
        X = check_images(X, int(self.levels))
        if len(X) < 2:
            raise ValueError("fit needs at least 2 images")
        device = resolve_device(self.device)
        dtype = DTYPES[self.dtype]
        self.device_, self.shape_ = device, tuple(X.shape[1:])
        self.settings_ = settings = self._resolve_settings(len(X), int(np.prod(X.shape[1:])))
        images = torch.as_tensor(X, dtype=dtype, device=device)
        # one stage per scale, each granted an equal share of the time left; the budget
        # counts every run of the fit
        fit = StagedFit(self._open_checkpoint(X),
                        None if self.max_seconds is None else float(self.max_seconds))
        seed = fit.seed(draw_seed(self.random_state))  # a resumed fit's: its first run's
        with self._seeded(seed):
            flow = self._new_flow().to(device, dtype)
            self.flow_ = flow
            generator = torch.Generator().manual_seed(seed)

            def train_scale(run: StageRun) -> TrainResult:
                config = TrainConfig(max_iter=settings.max_iter,
                                     batch_size=settings.batch_size, lr=settings.lr,
                                     lr_schedule=settings.lr_schedule,
                                     weight_decay=float(self.weight_decay),
                                     max_seconds=run.seconds, verbose=self.verbose)
                return train(flow.blocks[run.index], images, self._scale_loss(run.index),
                             config, generator=generator, checkpoint=run.checkpoint)

            scales = [Stage(f"scale {s}", tags={"scale": s}) for s in range(flow.n_scales)]
            result, fault = run_stages(fit, scales, train_scale, module=flow,
                                       generator=generator, device=device)
        finish_fit(self, result, fault)  # the flow keeps its last good parameters
        return self

    def _new_flow(self) -> MultiscaleImageCNF:
        return MultiscaleImageCNF(self.shape_, n_scales=int(self.n_scales),
                                  hidden=tuple(self.hidden), alpha=float(self.alpha),
                                  method=self.method, rtol=self.rtol, atol=self.atol,
                                  adjoint=False)

    def _open_checkpoint(self, X: np.ndarray) -> FitCheckpoint | None:
        return self._fit_checkpoint({"data shape": list(X.shape),
                                     "data digest": data_digest(X)[:16]})

    def save(self, path) -> None:
        """Write the fitted estimator to a ``torch.save`` file (loads with
        ``weights_only=True``), atomically."""
        check_is_fitted(self, "flow_")
        save_fitted(self, path, _FORMAT, self.flow_, shape=list(self.shape_))

    @classmethod
    def load(cls, path, device: str | None = None) -> ImageCNFDensity:
        """Read a file of :meth:`save` (``device`` overrides the saved one).

        Raises:
            FileNotFoundError, cnflow.ModelFileError: as :meth:`cnflow.CNFDensity.load`.
        """
        def rebuild(est: ImageCNFDensity, data: dict) -> nn.Module:
            est.shape_ = tuple(int(v) for v in data["shape"])
            return est._new_flow()

        est, flow = load_fitted(cls, path, _FORMAT, device, rebuild)
        est.flow_ = flow
        return est

    def _scale_loss(self, s: int):
        """Flow matching for block s on a minibatch of integer images: dequantise, carry
        them to block s's inputs (no gradient), regress its field."""
        levels, tol = int(self.levels), float(self.fine_tune_tol)
        gamma = float(self.time_exponent)
        # the earlier blocks' solves, at fine_tune_tol (built once, not per step)
        options = self.flow_.blocks[0].solve_options.replace(rtol=tol, atol=tol)

        def loss(block: nn.Module, images: torch.Tensor) -> torch.Tensor:
            y = dequantize(images, levels)
            with torch.no_grad():
                if s == 0:
                    h, _ = self.flow_.logit.forward(y)
                    inputs = squeeze(h).reshape(len(y), -1)
                else:
                    inputs = self.flow_.block_inputs(y, s, solve_options=options)
            return block.flow_matching_loss(inputs, time_exponent=gamma)

        return loss

    def _images(self, X) -> torch.Tensor:
        check_is_fitted(self, "flow_")
        X = check_images(X, int(self.levels), self.shape_)
        return torch.as_tensor(X, dtype=DTYPES[self.dtype], device=self.device_)

    def score_samples(self, X, *, batch_size: int | None = None) -> np.ndarray:
        """A lower bound on each image's discrete log-likelihood, log p((x + u)/L) − D log L
        in nats (u one seeded draw, so repeatable), by exact-trace solves; (n,)."""
        images = self._images(X)
        batch_size = 1024 if batch_size is None else check_positive_int(batch_size, "batch_size")
        generator = torch.Generator().manual_seed(0)
        out = []
        self.flow_.eval()
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                u = torch.rand(chunk.shape, generator=generator).to(chunk)
                y = (chunk + u) / int(self.levels)
                out.append(self.flow_.log_prob(y, trace="exact"))
        dims = math.prod(self.shape_)
        return torch.cat(out).double().cpu().numpy() - dims * math.log(int(self.levels))

    def score(self, X, y=None) -> float:
        """The mean of :meth:`score_samples` (nats per image)."""
        return float(self.score_samples(X).mean())

    def bits_per_dim(self, X) -> float:
        """Test bits per dimension, −mean log₂ P(x) / D, by the bound of
        :meth:`score_samples` (an upper bound on the true bits/dim)."""
        return float(bits_per_dim(self.score_samples(X).mean(), math.prod(self.shape_)))

    def sample(self, n_samples: int = 1, random_state=None, *,
               steps: int | None = None) -> np.ndarray:
        """Integer images (n_samples, C, H, W): draws y of the flow, ⌊y · L⌋.

        Arguments:
            n_samples: the number of images.
            random_state: None, an int or a numpy RandomState (an int repeats the draws).
            steps: None (default): every block's reverse map solved adaptively; K, a
                positive integer: by K fixed midpoint steps per block, 2K evaluations each
                (:meth:`cnflow.flows.MultiscaleImageCNF.sample`; ``flow_.nfe_forward``
                sums them).
        """
        check_is_fitted(self, "flow_")
        n_samples = check_positive_int(n_samples, "n_samples")
        if steps is not None:
            steps = check_steps(steps)
        with self._seeded(draw_seed(random_state)), torch.no_grad():
            y = self.flow_.sample(n_samples, steps=steps)
        levels = int(self.levels)
        return np.clip(np.floor(y.double().cpu().numpy() * levels), 0, levels - 1).astype(
            np.int64)
