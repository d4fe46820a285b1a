"""How an estimator fits, kept out of the estimator classes: each module one job, none of
them importing an estimator (they take one as an argument and call its small subclass
interface).

- :mod:`~cnflow.estimators.fitting.table`: the rows being fitted or scored, in memory or
  memory-mapped (the one place where the two are told apart).
- :mod:`~cnflow.estimators.fitting.plan`: what a fit fixes before its members (seed, row
  order, folds, the chosen map), drawn or read back from a checkpoint.
- :mod:`~cnflow.estimators.fitting.members`: one member's rows, Gaussian mixture, training,
  restoring and stacking, as the stages of one staged run.
- :mod:`~cnflow.estimators.fitting.run`: the staged run every estimator's fit ends with
  (faults caught, history kept), forgetting a fitted state, the seed.
- :mod:`~cnflow.estimators.fitting.fit`: a flow density estimator's fit once its settings
  are resolved.
- :mod:`~cnflow.estimators.fitting.persistence`: the records a fit and a model file are made
  of (tensors and plain values that load with ``weights_only=True``), one save and one load
  for every estimator, and the checks that a file's parts agree with each other.
"""
