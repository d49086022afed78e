"""PowerSGD: rank-r compression by power iteration, with error feedback.

Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization", NeurIPS 2019. A gradient G is reshaped to an n×m matrix; E is this rank's error
buffer (zero at first), r the rank. Factors are kept *transposed*, as r×n and r×m row-major tensors
(Pᵀ, Qᵀ): every product then has the thin factor on the left, the form BLAS runs at memory speed.

Where things live:

- `compressor` — `PowerSGD`, the Horovod compression object users build, and everything the schemes
  share: per-tensor planning, M = G + E, warm-up, staging and committing state, checkpoints, and
  the only place eager and graph backends differ;
- `scheme` — `Scheme`, the contract a scheme implements (``transfers``, ``send``, ``receive``, and
  ``own_rounds`` for one with collectives of its own);
- `classic`, `alternating`, `two_sided` — the schemes, each with its math in its docstring;
- `factors` — the seeded, warm-started and renewed factors every scheme multiplies by (and the
  zero-gradient rule); `state` — per-tensor state and the per-step `Job`; `config` — the
  hyper-parameters and their defaults.
"""
from .compressor import SCHEMES, PowerSGD
from .config import DEFAULTS, PowerSGDConfig

__all__ = ["PowerSGD", "PowerSGDConfig", "DEFAULTS", "SCHEMES"]
