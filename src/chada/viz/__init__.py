"""Pictures of what a model learned: per-channel attention maps and joint embedding projections.

- :mod:`chada.viz.attention`: last-layer CLS attention per channel, inter-channel attention matrix;
  :mod:`chada.viz.attention_figure`: :func:`~chada.viz.attention_figure.plot_attention_grid`
  (``chada attention``).
- :mod:`chada.viz.projection`: PCA/UMAP of several feature files in one space with separability
  scores; :mod:`chada.viz.projection_figure`: :func:`~chada.viz.projection_figure.plot_projection`
  (``chada project``).
- :mod:`chada.viz.style`: shared plotting helpers (PNG + SVG written atomically, colours, legends).

Submodules are imported on demand so that ``import chada.viz`` stays cheap (no matplotlib, no umap).
"""

__all__ = ["attention", "attention_figure", "projection", "projection_figure", "style"]
