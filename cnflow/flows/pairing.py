r"""How flow matching pairs data rows with base draws: independently, or by minibatch optimal
transport.

Flow matching regresses the field on the velocities of straight paths between pairs
:math:`(x_i, z_i)` of a data row and a base draw. Any coupling whose two marginals are the
data and the base has the same kind of minimiser, a field that carries one to the other; the
coupling decides how curved that field's paths are. Independent pairs (the default of
Lipman et al. 2023) cross one another, and the learned field, which averages the crossing
velocities, follows curved paths that an adaptive solver needs many steps for. Minibatch
optimal-transport pairing (Tong et al. 2024; Pooladian et al. 2023) draws the minibatch's base
points as before and then re-assigns them to the rows by the permutation that minimises the
squared transport cost,

.. math:: \pi^\star = \arg\min_{\pi \in S_n} \sum_{i=1}^n \| x_i - z_{\pi(i)} \|^2,

an assignment problem solved exactly (Hungarian-type algorithm,
:func:`scipy.optimize.linear_sum_assignment`, :math:`O(n^3)` at worst). The set of base draws
is unchanged, so each :math:`z_{\pi(i)}` still has the base's law, and as the batch grows the
pairs approach the optimal-transport coupling, whose displacement paths do not cross: the
field's paths straighten, and fewer solver steps reach the same accuracy.

The exact assignment of a batch of 2,048 costs about a second on a CPU core, so a large batch
is cut into blocks of at most ``block_size`` rows (in the order the rows come, which is random)
and each block is assigned on its own: the pairs are then optimal within blocks.

With a conditional flow the base is :math:`\mathcal{N}(0, I)` given every context, so a base
draw may only move between rows of the same context: the rows are grouped by equal context
rows and each group is assigned on its own (rows whose contexts are all different keep their
independent draws).

References:
    Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf & Bengio (2024), "Improving and
    generalizing flow-based generative models with minibatch optimal transport", TMLR.
    Pooladian, Ben-Hamu, Domingo-Enrich, Amos, Lipman & Chen (2023), "Multisample flow
    matching: straightening flows with minibatch couplings", ICML.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["PAIRINGS", "OT_BLOCK_SIZE", "ot_permutation", "paired"]

#: The pairings :meth:`cnflow.CNF.flow_matching_loss` accepts.
PAIRINGS = ("independent", "ot")
#: The largest block of rows one exact assignment pairs (its cost grows as the cube).
OT_BLOCK_SIZE = 256


def ot_permutation(x: Tensor, z: Tensor, block_size: int = OT_BLOCK_SIZE) -> Tensor:
    r"""The permutation :math:`\pi` with :math:`\sum_i \|x_i - z_{\pi(i)}\|^2` minimal within
    each block of ``block_size`` consecutive rows (one block when the batch is no larger).

    Arguments:
        x, z: shape (n, D), the data rows and the base draws.
        block_size: the rows of one exact assignment (at least 1).

    Returns:
        A long tensor of shape (n,) on x's device; ``z[perm]`` is paired with ``x``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [10.0]]); z = torch.tensor([[9.0], [1.0]])
        >>> ot_permutation(x, z).tolist()
        [1, 0]
    """
    if x.ndim != 2 or z.shape != x.shape:
        raise ValueError(f"x and z must have one shape (n, D), got {tuple(x.shape)} and "
                         f"{tuple(z.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    n = x.shape[0]
    perm = np.arange(n)
    xs = x.detach().double().cpu()
    zs = z.detach().double().cpu()
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        cost = torch.cdist(xs[start:stop], zs[start:stop]).square().numpy()
        _, cols = linear_sum_assignment(cost)
        perm[start:stop] = start + cols
    return torch.as_tensor(perm, device=x.device)


def paired(x: Tensor, z: Tensor, pairing: str, context: Tensor | None = None,
           block_size: int | None = None) -> Tensor:
    """The base draws re-ordered as ``pairing`` says: z itself (``"independent"``) or
    ``z[π]`` with π the blockwise optimal-transport permutation (``"ot"``), within groups
    of equal context rows when a context is given.

    Arguments:
        x, z: shape (n, D), the data rows and the base draws (one per row).
        pairing: one of :data:`PAIRINGS`.
        context: the rows' contexts, shape (n, C), or None.
        block_size: as in :func:`ot_permutation` (None: :data:`OT_BLOCK_SIZE`).

    Returns:
        The base draws, shape (n, D), the i-th paired with ``x[i]``.
    """
    block_size = OT_BLOCK_SIZE if block_size is None else block_size
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; valid: {', '.join(PAIRINGS)}")
    if pairing == "independent":
        return z
    if context is None:
        return z[ot_permutation(x, z, block_size)]
    _, group = torch.unique(context.detach(), dim=0, return_inverse=True)
    out = z.clone()
    for g in torch.unique(group):
        rows = torch.nonzero(group == g).flatten()
        if len(rows) > 1:
            out[rows] = z[rows][ot_permutation(x[rows], z[rows], block_size)]
    return out
