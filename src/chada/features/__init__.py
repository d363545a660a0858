"""Hand-made image features: the baselines every learned embedding is compared against.

- :func:`shortcut_features`: per-image intensity statistics + nuclei count/density (fast shortcut
  controls);
- :func:`handmade_features`: intensity statistics, histograms, texture and per-cell shape/intensity
  features, channel-pooled (fixed length for any channel count) or per-channel;
- :func:`cellprofiler_features`: CellProfiler-like per-cell features aggregated per image;
- :func:`tissue_features`: stain separation + nuclei graph statistics for RGB histology;
- :func:`chada.features.extract.extract_features`: any of them by name.

Pure functions of numpy images; running them over a manifest into a feature file is
:mod:`chada.encode.handmade` (``chada features``).
"""

from chada.features.cellprofiler import cellprofiler_features
from chada.features.handmade import handmade_features
from chada.features.shortcut import SHORTCUT_NAMES, shortcut_features
from chada.features.tissue import tissue_features

__all__ = [
    "SHORTCUT_NAMES",
    "cellprofiler_features",
    "handmade_features",
    "shortcut_features",
    "tissue_features",
]
