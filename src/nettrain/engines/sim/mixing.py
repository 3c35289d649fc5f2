"""``x <- W @ x`` on the simulator's stack with the cheapest exact kernel for ``W``.

* **diagonals**: every nonzero of ``W`` lies on the main diagonal or on at most
  :data:`MAX_DIAGONALS` wrapped diagonals ``{(i, (i + k) mod n)}`` (rings, circulant
  graphs, the one-peer exponential schedule). Then
  ``W @ x = w_0 * x + sum_k w_k * roll(x, -k)``: one scaled copy and in-place slice
  updates per diagonal, no index gathers and no zero-filled output. On the CPU the rows
  are taken :data:`BLOCK_BYTES` of output at a time, every term of a block before the
  next block, so that a block's output stays in cache between its terms: the stack is
  read once and written once from memory instead of once per term (a ring of 65,536
  agents of 2,410 parameters mixed 1.4x as fast). Each entry's arithmetic, and its
  order, is the same either way;
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
BLOCK_BYTES = 2**20  # output rows the diagonal kernel finishes at a time on the CPU


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
        out = torch.empty_like(x)
        n = len(x)
        row_bytes = max(1, x[:1].numel() * x.element_size())
        block = max(1, BLOCK_BYTES // row_bytes) if x.device.type == "cpu" else n
        for start in range(0, n, block):
            self._rows(x, out, start, min(start + block, n))
        return out

    def _rows(self, x: torch.Tensor, out: torch.Tensor, start: int, end: int) -> None:
        """Rows ``start:end`` of ``W @ x`` into ``out``: ``w_0 x_i``, then each
        diagonal's ``w_k x_{(i + k) mod n}`` added in turn."""
        n = len(x)
        w0 = _part(self.weights[0], start, end)
        torch.mul(x[start:end], w0, out=out[start:end])
        for k, w in zip(self.offsets, self.weights[1:], strict=True):
            # rows i < n - k read x[i + k]; rows i >= n - k read x[i + k - n]
            split = min(end, max(start, n - k))
            if start < split:
                _add(out[start:split], x[start + k : split + k], _part(w, start, split))
            if split < end:
                _add(out[split:end], x[split + k - n : end + k - n], _part(w, split, end))


def _part(w: torch.Tensor | float, start: int, end: int) -> torch.Tensor | float:
    """Rows ``start:end`` of a diagonal's weights: a column ``(n, 1)`` or one number."""
    return w if isinstance(w, float) else w[start:end]


def _add(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor | float) -> None:
    """``out += w * x`` in place; ``w`` one number or a column ``(rows, 1)``."""
    if isinstance(w, float):
        out.add_(x, alpha=w)
    else:
        out.addcmul_(x, w)
