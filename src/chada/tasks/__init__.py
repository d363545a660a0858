"""Evaluations that need more than feature files: they run encoders or train something of their own.

- :mod:`chada.tasks.evaluation`: :func:`run_evaluation` (``chada evaluate``), the frozen-feature
  protocol of :mod:`chada.eval` plus the config's channel-reconstruction tasks, one results table
  and one report;
- :mod:`chada.tasks.reconstruction`: the paper's channel-reconstruction protocol (a decoder trained
  on frozen CLS embeddings);
- :mod:`chada.tasks.channel_subsets`: scores on every subset of the stains (``chada subsets``);
- :mod:`chada.tasks.chammi`: the CHAMMI benchmark, embedding and official scoring
  (``chada benchmark chammi``).

Submodules are imported on demand.
"""
