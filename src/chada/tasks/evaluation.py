"""The whole evaluation of ``chada evaluate``: feature-file tasks plus reconstruction tasks, one report.

``run_evaluation(config, out_dir)`` reads the config (:mod:`chada.eval.config` for the feature-file
part, plus the sections below), runs the frozen-feature protocol (:mod:`chada.eval.protocol`: linear
probes, weighted kNN and 1-NN on 1/10/100 % of the training labels, every seed), the channel
reconstruction tasks (:mod:`chada.tasks.reconstruction`), then the diagnostics
(:mod:`chada.eval.diagnostics_table`) and the paired comparisons of every learned model against its
untrained copy, the One-Channel ViT and the hand-made features (:mod:`chada.eval.comparisons`,
``comparisons.csv``), writes the report (:mod:`chada.eval.report`) and returns the
long-format results.

Sections read here on top of :mod:`chada.eval.config`::

    torch_threads: 1               # torch CPU threads of the reconstruction decoders (null: torch default)
    reconstruction:                # channel reconstruction (BBBC021 protocol), see chada.tasks.reconstruction
      - name: actin
        manifest: data/bbbc021/manifest.csv
        target_channel: Actin
        models: {chada: runs/chada/final, chada_untrained: {model: chada_vit_moyen, seed: 0}}
        image_size: 224

    dense:                         # segmentation probes on frozen dense features, see chada.tasks.dense
      - name: dsb2018_nuclei
        source: dsb2018
        models: {chada: runs/chada/final, handmade: handmade}

    profiles:                      # image-based profiling of feature tables, see chada.tasks.profiling
      tables: {chada: emb/cells_chada.parquet, cp_measure: emb/cells_cp.parquet}  # default: models:
      batch_cols: [batch]
      exclude_moa: [inactive]

The profiles section writes ``profiles/`` (chada profile's folder) and adds its section to
``results.md``; a config may hold only a profiles section.

Dense tasks (:mod:`chada.tasks.dense`) add rows of kind ``"dense"`` (metrics ``dense_iou``,
``dense_dice``; ``feature`` = the probe head; chance = all background, 0), and write
``dense_<name>.md/.csv/.png`` with 95 % bootstrap intervals and the probes for ``chada segment``.

Reconstruction tasks (parsed by :func:`chada.tasks.reconstruction.parse_reconstruction_tasks`) run
frozen encoders on a manifest and add rows of kind ``"reconstruction"`` (metrics ``recon_mse``,
``recon_mae``, ``recon_r2``; fraction 1.0; chance = the metric of predicting the training mean,
R2 ~ 0) to the same results table; a config may hold only reconstruction tasks.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from chada.config_reader import in_file
from chada.eval.comparisons import comparison_table, holm_by_table
from chada.eval.config import (
    ModelSpec,
    TaskSpec,
    load_config,
    parse_models,
    parse_settings,
    parse_tasks,
    seed_list,
)
from chada.eval.diagnostics_table import compute_diagnostics
from chada.eval.protocol import RESULT_COLUMNS, Loader, run_feature_tasks
from chada.io import atomic_write_text, finishing
from chada.tasks.dense import dense_markdown, parse_dense_tasks, run_dense_task, write_dense_outputs
from chada.tasks.profiling import ProfilingTask, parse_profiles_section, run_profiling
from chada.tasks.reconstruction import (
    parse_reconstruction_tasks,
    plot_reconstruction_examples,
    run_reconstruction_task,
)
from chada.viz.paired_figure import plot_paired_forest
from chada.viz.results_figures import plot_results

__all__ = ["normalize_config", "run_evaluation"]

# Reconstruction decoders are many tiny conv/linear steps: intra-op threading only adds sync overhead.
# On the loaded 2-core machine (load ~7) a 32-px decoder fit (10 epochs x 72 images) took 1.5-4.9 s
# with 1 torch thread and 36-38 s with 2.
DEFAULT_TORCH_THREADS = 1


def normalize_config(
    config: dict | str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, ModelSpec], list[TaskSpec]]:
    """Load (if a path) and validate a whole config; returns ``(settings, models, tasks)``.

    ``settings["reconstruction"]`` holds the parsed reconstruction tasks and ``settings["torch_threads"]``
    their torch thread count.
    """
    raw, base = load_config(config)
    try:
        return _normalize(raw, base)
    except (ValueError, TypeError) as exc:  # name the file, as every config reader does
        raise (exc if isinstance(config, dict) else in_file(config, exc)) from None


def _normalize(
    raw: dict[str, Any], base: Path
) -> tuple[dict[str, Any], dict[str, ModelSpec], list[TaskSpec]]:
    settings = parse_settings(raw, base)
    settings["torch_threads"] = raw.get("torch_threads", DEFAULT_TORCH_THREADS)
    models = parse_models(raw, base)
    settings["reconstruction"] = parse_reconstruction_tasks(
        raw.get("reconstruction"),
        base,
        seeds=seed_list(settings["seeds"]),
        test_fraction=float(settings["test_fraction"]),
        num_threads=None if settings["torch_threads"] is None else int(settings["torch_threads"]),
    )
    settings["dense"] = parse_dense_tasks(raw.get("dense"), base, seeds=seed_list(settings["seeds"]))
    model_paths = {n: m.path for n, m in models.items() if m.path is not None}
    settings["profiles"] = parse_profiles_section(raw.get("profiles"), base, model_paths)
    if (
        not raw.get("tasks")
        and not settings["reconstruction"]
        and not settings["dense"]
        and not settings["profiles"]
    ):
        raise ValueError("the config names no tasks (neither tasks:, reconstruction:, dense: nor profiles:)")
    return settings, models, parse_tasks(raw, base, settings, models)


def run_evaluation(
    config: dict | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    print_table: bool = True,
    write: bool = True,
    plots: bool = True,
    log: Callable[[str], None] | None = None,
    precision: str | None = None,
) -> pd.DataFrame:
    """Run the whole protocol; return long-format results (columns ``RESULT_COLUMNS``).

    With ``write`` the report (Markdown/JSON/CSV tables, diagnostics, Fig.1/Fig.4-style plots, and the
    reconstruction example figures) goes to ``out_dir`` (default: the config's ``out_dir``, else
    ``./eval_results``). The diagnostics table is attached as ``results.attrs["diagnostics"]``; for
    reconstruction tasks ``results.attrs["reconstruction_info"]`` (per model: embedding size, decoder
    parameters, ...) and ``results.attrs["reconstruction_examples"]``
    (:class:`chada.tasks.reconstruction.ReconstructionExamples`, one per task).

    ``log`` gets one line as each step starts and ends (default: stderr when ``progress``).
    ``precision`` (``"fp32"`` / ``"bf16"``; None: each task's own, fp32 by default) is the precision of
    the encoders that reconstruction and dense tasks run; it is recorded in ``results.json``.
    """
    from threadpoolctl import threadpool_limits

    from chada.eval import report

    settings, models, tasks = normalize_config(config)
    if precision is not None:
        for key in ("reconstruction", "dense"):
            settings[key] = [dataclasses.replace(t, precision=precision) for t in settings.get(key) or []]
    out = Path(out_dir or settings.get("out_dir") or "eval_results")
    if log is None:
        log = _stderr if progress else _silent
    # Hundreds of small fits: multi-threaded BLAS only adds spin-wait overhead, and on a loaded 2-core
    # machine it was measured ~30x slower than one thread (PCA of 450 x 600: 5.8 s vs 0.23 s).
    with threadpool_limits(limits=settings["blas_threads"]):
        results = _run(settings, models, tasks, progress, log)
    if print_table:
        report.print_tables(results, results.attrs["diagnostics"])
        for outcome in results.attrs.get("dense") or []:
            print(dense_markdown(outcome))
    if write:
        # DONE.json last: a reader tells this folder from one a Ctrl-C or a full disk left half-written
        with finishing(out, command="chada evaluate", rows=len(results)):
            _write(results, settings, tasks, out, plots, log)
    return results


def _write(results: pd.DataFrame, settings: dict, tasks: Any, out: Path, plots: bool, log: Callable) -> None:
    """The report, figures and dense outputs of one evaluation (:func:`run_evaluation`)."""
    from chada.eval import report

    extra: dict[str, Any] = {"elapsed_s": results.attrs["elapsed_s"]}
    ran = [t.precision for key in ("reconstruction", "dense") for t in settings.get(key) or []]
    if ran:  # encoders ran here (not only feature files were read)
        extra["precision"] = sorted(set(ran))
    if results.attrs.get("reconstruction_info"):
        extra["reconstruction"] = results.attrs["reconstruction_info"]
    report.write_report(results, results.attrs["diagnostics"], out, extra=extra,
                        comparisons=results.attrs.get("comparisons"))  # fmt: skip
    if plots:
        # a dense-only config has no bars or curves to draw: no step line for it
        fig_log = log if tasks or settings.get("reconstruction") else _silent
        with _step(fig_log, "figures (Fig. 1 bars, Fig. 4 low-data curves, reconstruction examples)"):
            plot_results(report.summarize(results), out)
            plot_paired_forest(results.attrs.get("comparisons"), out)
            for ex in results.attrs.get("reconstruction_examples") or []:
                plot_reconstruction_examples(ex, out)
    _write_dense(results.attrs.get("dense") or [], out, plots)
    if settings.get("profiles"):
        _write_profiles(settings["profiles"], out, log)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _silent(msg: str) -> None:
    pass


@contextmanager
def _step(log: Callable[[str], None], what: str) -> Iterator[None]:
    """``what ...`` when a step starts and ``what: done in N s`` when it ends."""
    t0 = time.perf_counter()
    log(f"{what} ...")
    yield
    log(f"{what}: done in {time.perf_counter() - t0:.0f} s")


def _write_dense(outcomes: list[Any], out: Path, plots: bool) -> None:
    """Each dense task's interval table, figure and probes (chada.tasks.dense.report), also in results.md."""
    for outcome in outcomes:
        write_dense_outputs(outcome, out, plots=plots)
    if outcomes:
        md = out / "results.md"
        text = md.read_text() if md.exists() else ""
        parts = [text.rstrip(), "\n## Dense segmentation (IoU / Dice with 95 % intervals)\n"]
        atomic_write_text(md, "\n".join(parts + [dense_markdown(o) for o in outcomes]))


def _write_profiles(task: ProfilingTask, out: Path, log: Callable[[str], None]) -> None:
    """The ``profiles:`` section (chada.tasks.profiling) into ``out/profiles/``, also in results.md."""
    with _step(log, f"profiles: {len(task.tables)} model(s), mAP and NSC/NSCB"):
        _, _, section = run_profiling(task, out / "profiles", log=log)
    md = out / "results.md"
    text = md.read_text() if md.exists() else ""
    atomic_write_text(md, text.rstrip() + "\n\n" + section.replace("](figures/", "](profiles/figures/"))


def _run(
    settings: dict[str, Any], models: dict[str, ModelSpec], tasks: list[TaskSpec], progress: bool,
    log: Callable[[str], None],
) -> pd.DataFrame:  # fmt: skip
    loader = Loader()
    t0 = time.perf_counter()
    n_models = len({n for t in tasks for n in t.embeddings})
    # a config with only dense or reconstruction tasks says nothing of the steps it does not have
    feature_log = log if tasks else _silent
    items: dict[tuple, Any] = {}
    with _step(feature_log, f"probes, kNN and 1-NN: {len(tasks)} task(s) x {n_models} model(s)"):
        rows = run_feature_tasks(settings, models, tasks, loader, progress, items)
    recon_info: list[dict[str, Any]] = []
    recon_examples = []
    for rtask in settings.get("reconstruction") or []:
        with _step(
            log, f"reconstruction {rtask.name}: {len(rtask.models)} model(s) x {len(rtask.seeds)} seed(s)"
        ):
            outcome = run_reconstruction_task(rtask, progress=progress)
        rows.extend(outcome.rows)
        recon_info.extend(outcome.info)
        recon_examples.append(outcome.examples)
    dense = []
    for dtask in settings.get("dense") or []:
        with _step(log, f"dense {dtask.name}: {len(dtask.models)} model(s), heads {', '.join(dtask.heads)}"):
            dense.append(run_dense_task(dtask, progress=progress))
    for d in dense:
        rows.extend(d.rows)
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    with _step(feature_log, "diagnostics (baseline ratios, CKA, participation ratio, shortcut probes)"):
        diagnostics = compute_diagnostics(results, settings, models, tasks, loader)
    results.attrs["diagnostics"] = diagnostics
    with _step(feature_log, "paired comparisons (each learned model vs its references, image by image)"):
        comps = [comparison_table(items, results, models), *(d.comparisons for d in dense)]
        comps = [c for c in comps if len(c)] or comps[:1]
        # dense rows (metric dense_iou) form their own Holm tables; the feature-file tables are unchanged
        results.attrs["comparisons"] = (
            holm_by_table(pd.concat(comps, ignore_index=True)) if len(comps) > 1 else comps[0]
        )
    results.attrs["elapsed_s"] = time.perf_counter() - t0
    if dense:
        results.attrs["dense"] = dense
    if recon_info:
        results.attrs["reconstruction_info"] = recon_info
        results.attrs["reconstruction_examples"] = recon_examples
    return results
