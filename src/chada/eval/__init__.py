"""Protocols that see only feature files (:mod:`chada.encode.store`): no model runs here.

- :mod:`~chada.eval.probes`, :mod:`~chada.eval.knn`, :mod:`~chada.eval.lowdata`: linear probes,
  weighted kNN, stratified low-data subsets;
- :mod:`~chada.eval.diagnostics`: CKA, participation ratio, baseline ratios, shortcut analyses;
- :mod:`~chada.eval.config`, :mod:`~chada.eval.protocol`, :mod:`~chada.eval.diagnostics_table`: the
  evaluation config, every task x model x regime x seed, every diagnostic of every model;
- :mod:`~chada.eval.intervals`: chance (the best constant predictor) and 95 % intervals;
- :mod:`~chada.eval.paired`, :mod:`~chada.eval.comparisons`: paired tests of two models on the same
  items (paired bootstrap, exact McNemar, Holm) and every learned model against its references;
- :mod:`~chada.eval.report`: the tables (the Fig. 1 / Fig. 4 figures are
  :mod:`chada.viz.results_figures`: no plotting toolkit here).

Evaluations that run an encoder or train something of their own live in :mod:`chada.tasks`.
"""
