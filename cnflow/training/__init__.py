"""Training: the loop every estimator shares, its objectives, devices and data parallelism.

- :mod:`~cnflow.training.types`: :class:`TrainConfig`, :class:`TrainResult`, :class:`TrainingFault`;
- :mod:`~cnflow.training.loop`: :func:`train`, minibatch Adam with history, validation, early
  stopping and fault handling;
- :mod:`~cnflow.training.objectives`: density matching by reverse KL;
- :mod:`~cnflow.training.distributed`: data parallelism under ``torch.distributed``;
- :mod:`~cnflow.training.devices`: device resolution and seeded random streams;
- :mod:`~cnflow.training.checkpoint`: checkpoints of a fit, written while training and
  read back to resume it;
- :mod:`~cnflow.training.stages`: the driver of fits made of stages (members, phases,
  scales): time shares, stage records in the checkpoint, faults, joined histories.
"""

from .checkpoint import CheckpointMismatchError, FitCheckpoint
from .devices import resolve_device, seeded_rng
from .distributed import distributed_rank
from .loop import LR_SCHEDULES, train
from .objectives import fit_density_matching, reverse_kl_loss
from .types import LossFn, TrainConfig, TrainingFault, TrainResult

__all__ = ["CheckpointMismatchError", "FitCheckpoint", "LR_SCHEDULES", "TrainConfig",
           "TrainResult", "TrainingFault", "LossFn", "train", "resolve_device",
           "seeded_rng",
           "distributed_rank", "reverse_kl_loss", "fit_density_matching"]
