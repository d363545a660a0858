"""Image-based profiling on feature tables: wells and treatments, per-plate normalisation, batch
correction, and the readouts the field reports (mAP with copairs, NSC / NSCB 1-NN MoA accuracy).

Reads feature tables only (``.parquet``, ``.h5ad``, ``.npz``, ``.csv``): no model, no image. The
steps, in order: :mod:`~chada.profiles.io` -> :mod:`~chada.profiles.aggregate` ->
:mod:`~chada.profiles.normalize` -> :mod:`~chada.profiles.readouts` -> :mod:`~chada.profiles.compare`;
:mod:`~chada.profiles.run` chains them for ``chada profile``.
"""

from __future__ import annotations

from chada.profiles.config import ProfileConfig

__all__ = ["ProfileConfig"]
