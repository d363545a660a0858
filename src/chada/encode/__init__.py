"""Turning images into feature files: models and hand-made features behind one interface.

- :mod:`chada.encode.encoders`: the :class:`~chada.encode.encoders.Encoder` interface (a batch of
  images -> ``{pool: [B, D]}``), its model and hand-made implementations, :func:`resolve_encoder`
  (folder / registered name / module / ``"handmade"`` -> encoder) and :func:`embed_images` (one batch);
- :mod:`chada.encode.embed`: :func:`embed_manifest`, every image of a manifest through one encoder,
  chunked and resumable (``chada embed``);
- :mod:`chada.encode.handmade`: the hand-made feature kinds over a manifest (``chada features``);
- :mod:`chada.encode.chunks`: the resumable ``<out>.parts/`` chunk store;
- :mod:`chada.encode.store`: the feature file itself (:class:`EmbeddingSet`, ``save``/``load``), the
  only thing :mod:`chada.eval` and :mod:`chada.viz` read.

Submodules are imported on demand (``import chada.encode`` imports none of them).
"""

__all__ = ["chunks", "embed", "encoders", "handmade", "store"]
