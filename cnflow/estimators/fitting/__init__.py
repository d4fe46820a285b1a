"""How an estimator fits, kept out of the estimator classes: each module one job, none of
them importing an estimator (they take one as an argument and call its small subclass
interface).

- :mod:`~cnflow.estimators.fitting.persistence`: the records a fit and a model file are made
  of (tensors and plain values that load with ``weights_only=True``), reading a model file,
  and the check that its parts agree with each other.
- :mod:`~cnflow.estimators.fitting.plan`: what a fit fixes before its members (seed, row
  order, folds, the chosen map), drawn or read back from a checkpoint.
- :mod:`~cnflow.estimators.fitting.members`: one member's rows, Gaussian mixture, training,
  restoring and stacking, as the stages of one staged run.
"""
