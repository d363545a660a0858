"""Channel-subset evaluation: what a frozen encoder's features are worth when stains are missing.

For a labelled dataset whose images all carry the same C named channels::

    df = run_channel_subsets(
        {"chada": "runs/chada/teacher", "chada_untrained": "chada_vit_test",
         "one_channel": "one_channel_vit_test", "handmade": "handmade"},
        "data/manifest.csv", label_column="label", out_dir="results/subsets",
        select=Selection(datasets=["coloc_5ch"]),  # chada.encode.options
    )

Protocol:

- **Subsets.** For every k in 1..C: all ``comb(C, k)`` subsets when there are at most ``max_subsets``
  of them, otherwise ``max_subsets`` distinct subsets drawn by ``numpy.random.default_rng([subset_seed,
  k])`` (:func:`enumerate_subsets`). The subsets are defined on channel *names*, so every model and
  every image sees the same stains whatever order its files list them in.
- **Channel identity is kept.** A subset keeps each channel's slot (its canonical id from
  :class:`chada.data.channels.ChannelPolicy`: ``channel_order``, else the names the checkpoint
  recorded, else the dataset's own order): for ChAda-ViT a missing stain is an absent set of tokens,
  never a shift of the remaining channels into other slots.
- **Embedding.** Images are read once (``image_size`` resizes them), then every subset is embedded by
  slicing channels, all images of a subset in batches of ``batch_size``. Deterministic models (saved
  folders, modules, ``"handmade"``) are embedded once; registered names (untrained baselines) are
  re-initialised with each seed. One-Channel ViT's concatenating pools become their mean over
  channels (``"mean"``/``"mean_all"``) so that one probe can read any k.
- **Two settings.** ``train_all``: probe fitted on the all-channel features of the training rows,
  tested on the subset features of the test rows (a stain missing at test time). ``train_subset``:
  fitted and tested on the subset features. With k = C both are the same computation.
- **Metrics.** ``linear_probe`` (:func:`chada.eval.probes.linear_probe_classification`) and ``knn``
  (:func:`chada.eval.knn.knn_accuracy`, weighted cosine k=20, T=0.07) top-1 accuracy.
- **Seeds.** Seeds drive the random weights of untrained models, the split when the data has no
  usable split column, and the probe's PCA; with deterministic features and a fixed split a score
  does not depend on the seed, so it is computed once and recorded for every seed (as the evaluation
  protocol does). The summary gives, per (model, setting, metric, k), the mean over seeds of the
  mean over subsets, its std over seeds (``std``), and the spread over subsets (``subset_std``).

Outputs in ``out_dir``: ``channel_subsets.csv`` (one row per model x setting x metric x subset x
seed), ``channel_subsets_summary.csv``, ``channel_subsets.md``, ``channel_subsets.json`` (settings,
subsets, slots, timings) and ``channel_subsets.png`` / ``.svg`` (score against k, one line per model,
one column per setting, one row per metric).

Modules: :mod:`.data` (subsets, images in memory, subset features), :mod:`.scoring` (the two
settings, probes and kNN, summary tables), :mod:`.plot` (the figure), :mod:`.run` (the driver).
"""


from chada.tasks.channel_subsets.data import SubsetData, embed_subsets, enumerate_subsets, load_subset_data
from chada.tasks.channel_subsets.plot import plot_channel_subsets
from chada.tasks.channel_subsets.run import run_channel_subsets
from chada.tasks.channel_subsets.scoring import METRICS, SETTINGS, subsets_markdown, summarize_subsets

__all__ = [
    "METRICS",
    "SETTINGS",
    "SubsetData",
    "embed_subsets",
    "enumerate_subsets",
    "load_subset_data",
    "plot_channel_subsets",
    "run_channel_subsets",
    "subsets_markdown",
    "summarize_subsets",
]
