"""Pictures of what a model learned: per-channel attention maps and joint embedding projections.

- :mod:`chada.viz.attention`: last-layer CLS attention per channel, inter-channel attention matrix,
  :func:`~chada.viz.attention.plot_attention_grid` (``chada attention``).
- :mod:`chada.viz.projection`: PCA/UMAP of several embedding files in one space with separability
  scores (``chada project``).
- :mod:`chada.viz.style`: shared plotting helpers (PNG + SVG written atomically, colours, legends).

Submodules are imported on demand so that ``import chada.viz`` stays cheap (no matplotlib, no umap).
"""

__all__ = ["attention", "projection", "style"]
