"""``x <- W @ x`` on the simulator's stack with the cheapest exact kernel for ``W``.

* **diagonals**: every nonzero of ``W`` lies on the main diagonal or on at most
  :data:`MAX_DIAGONALS` wrapped diagonals ``{(i, (i + k) mod n)}`` (rings, circulant
  graphs, the one-peer exponential schedule). Then
  ``W @ x = w_0 * x + sum_k w_k * roll(x, -k)``: one scaled copy and two in-place
  slice updates per diagonal, no index gathers and no zero-filled output;
* **dense**: at least :data:`DENSE_FROM` of the entries are nonzero: ``W @ x``;
* **sparse**: otherwise the COO product ``torch.sparse.mm(W, x)``, ``O(nnz d)``.

The three give the same numbers up to the order of the sums (a few ulps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nettrain.topology.weights import nonzero_entries

DENSE_FROM = 0.15  # share of nonzero entries from which W is multiplied as a dense matrix
MAX_DIAGONALS = 4  # wrapped off-diagonals beyond which a sparse product reads less


@dataclass(frozen=True)
class Mixing:
    """One round's ``W`` ready to multiply a stack ``x: (n, d)`` on its device."""

    kind: str  # diagonals | dense | sparse
    matrix: torch.Tensor | None  # dense or sparse W (kind dense, sparse)
    offsets: tuple[int, ...] = ()  # kind diagonals: k of each wrapped diagonal
    weights: tuple[torch.Tensor | float, ...] = ()  # w_0, then w_k: (n, 1) or one number

    @classmethod
    def of(cls, W: torch.Tensor, device: torch.device, dtype: torch.dtype) -> Mixing:
        """The kernel for the coalesced sparse ``W: (n, n)``."""
        n = W.shape[0]
        rows, cols, values = nonzero_entries(W)
        offsets = torch.unique((cols - rows) % n).tolist()
        off = [k for k in offsets if k != 0]
        if len(off) <= MAX_DIAGONALS:
            weights = []
            for k in [0, *off]:
                on = (cols - rows) % n == k
                w = torch.zeros(n, dtype=values.dtype, device=values.device)
                w[rows[on]] = values[on]
                constant = bool((w == w[0]).all())
                weights.append(float(w[0]) if constant else w.to(device, dtype)[:, None])
            return cls("diagonals", None, tuple(off), tuple(weights))
        if len(values) >= DENSE_FROM * n * n:
            return cls("dense", W.to_dense().to(device, dtype))
        return cls("sparse", W.to(device, dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``W @ x`` for ``x: (n, d)``, a new tensor."""
        if self.kind == "dense":
            return self.matrix @ x
        if self.kind == "sparse":
            return torch.sparse.mm(self.matrix, x)
        out = x * self.weights[0]
        n = len(x)
        for k, w in zip(self.offsets, self.weights[1:], strict=True):
            # rows i < n - k read x[i + k]; rows i >= n - k read x[i + k - n]
            _add(out[: n - k], x[k:], w if isinstance(w, float) else w[: n - k])
            _add(out[n - k :], x[:k], w if isinstance(w, float) else w[n - k :])
        return out


def _add(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor | float) -> None:
    """``out += w * x`` in place; ``w`` one number or a column ``(rows, 1)``."""
    if isinstance(w, float):
        out.add_(x, alpha=w)
    else:
        out.addcmul_(x, w)
