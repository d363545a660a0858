"""The main job: from images that ship with chada to a pretrained encoder and a results report.

Stages (each one writes a marker in ``OUT/stages/`` when done; a re-run skips finished stages and the
long ones resume from their own checkpoints/chunks):

1. ``data``: the bundled real images (DSB2018 nuclei crops, 1 channel; IHC tiles split into
   haematoxylin/eosin/DAB, 3 channels) and the synthetic assays (1, 2, 3 and 5 channels), as manifests.
2. ``pretrain``: DINO on the union of their training splits for ChAda-ViT and, with the same recipe
   and budget, the One-Channel ViT and the Inter-Channel-only ViT.
3. ``embed``: every task's images through every encoder: the three pretrained teachers, the same
   three architectures at random init (seed recorded), hand-made features and shortcut features.
4. ``evaluate``: linear probe, weighted kNN and 1-NN (+ ridge regression for the radius target) at
   1/10/100 % of the training labels over several seeds, with the diagnostics (baseline ratios,
   CKA, effective dimensionality, shortcut analyses).
5. ``figures``: attention grid (ChAda-ViT vs One-Channel ViT) on a 5-channel image, joint PCA/UMAP
   of all datasets with the ChAda-ViT embedding.
6. ``dense``: nucleus segmentation probes on the frozen encoders' dense maps, on the real DSB2018
   image (:mod:`.dense_stage`).
7. ``profiles``: treatment profiles of a small synthetic plate (single cells of the pretrained
   ChAda-ViT, its untrained copy, the hand-made features and cp_measure's CellProfiler
   measurements), mAP and NSC/NSCB (:mod:`.profile_stage`).
8. ``report``: ``OUT/report.md`` and ``OUT/report.html``.

Modules: :mod:`.settings` (encoders, tasks, settings, stage markers), :mod:`.stages` (data, embed,
evaluate, figures), :mod:`.pretraining` (the parallel DINO runs), :mod:`.summary` and :mod:`.report`
(the report).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from chada.io import DONE_NAME, UnfinishedFolderError, atomic_write_bytes, check_finished, mark_finished
from chada.pipeline.console import quickstart_console
from chada.pipeline.dense_stage import stage_dense
from chada.pipeline.pretraining import pretrain_all
from chada.pipeline.profile_stage import stage_profiles
from chada.pipeline.settings import QuickstartSettings, Stages
from chada.pipeline.stages import stage_data, stage_embed, stage_evaluate, stage_figures

__all__ = ["QuickstartSettings", "run_quickstart"]


def run_quickstart(settings: QuickstartSettings, log: Callable[[str], None] = print) -> Path:
    """Run every stage (skipping finished ones) and return the path of ``report.md``."""
    import torch

    from chada.pipeline.summary import build_report

    s = settings
    s.out.mkdir(parents=True, exist_ok=True)
    if s.threads:
        torch.set_num_threads(s.threads)
    _refuse_changed_settings(s)
    (s.out / DONE_NAME).unlink(missing_ok=True)  # until the report is written, the folder is unfinished
    atomic_write_bytes(s.out / "settings.json", json.dumps(asdict(s), indent=2, default=str).encode())
    stages = Stages(s.out, log)
    for stage in ("evaluate", "dense"):
        _redo_if_unfinished(stages, stage, log)
    t_all = time.perf_counter()
    with quickstart_console() as log_queue:
        data = stages.run("data", lambda: stage_data(s))
        manifests = data["manifests"]
        runs = pretrain_all(s, stages, manifests, log_queue)
        teachers = {run: r["teacher"] for run, r in runs.items()}
        untrained = {run: r["untrained"] for run, r in runs.items()}
        emb = stages.run("embed", lambda: stage_embed(s, manifests, teachers, untrained, log))
        ev = stages.run("evaluate", lambda: stage_evaluate(s, emb["files"], teachers, manifests, untrained, log))
        figs = stages.run("figures", lambda: stage_figures(s, manifests, teachers, emb["files"], log))
        stages.run("dense", lambda: stage_dense(s, teachers, untrained))
        # last: its plate has its own seed, so the stages above (and the headline) are unchanged by it
        stages.run("profiles", lambda: stage_profiles(s, teachers, untrained))
    timings = {p.stem: json.loads(p.read_text()).get("seconds", 0.0) for p in sorted(stages.dir.glob("*.json"))}
    timings["total (this run)"] = time.perf_counter() - t_all
    run = {"total_s": timings["total (this run)"], "reused_stages": stages.reused, "finished": time.strftime("%Y-%m-%d %H:%M %Z")}
    atomic_write_bytes(s.out / "run.json", json.dumps(run, indent=1).encode())
    md = build_report(s, data, teachers, ev, figs, timings, emb)
    # Last: what the README block and a reader trust (chada.io.check_finished).
    done = [md, md.with_suffix(".html"), s.out / "run.json", s.out / "settings.json", s.out / "machine.json"]
    done += [Path(ev["out"]) / DONE_NAME, s.out / "dense" / DONE_NAME]
    mark_finished(s.out, [p for p in done if p.is_file()], command="chada quickstart")
    return md


def _redo_if_unfinished(stages: Stages, name: str, log: Callable[[str], None]) -> None:
    """A stage recorded as done whose evaluation folder has no completion marker (a later run into it
    was interrupted, or it was edited) is run again instead of reused."""
    prev = stages.done(name)
    if prev is None or not prev.get("out"):
        return
    try:
        check_finished(prev["out"], "evaluation")
    except UnfinishedFolderError as exc:
        log(f"[{name}] {exc}; running it again")
        (stages.dir / f"{name}.json").unlink(missing_ok=True)


# Settings that only change how fast a run goes, not its numbers (jobs: pretrainings side by side,
# each on one thread either way).
_SAFE_TO_CHANGE = frozenset({"out", "timings", "jobs"})


def _refuse_changed_settings(s: QuickstartSettings) -> None:
    """A folder's finished stages are reused on a rerun, so a rerun with other settings would mix
    results made two ways (e.g. fp32 embeddings under a report that says bf16): refuse it, naming the
    settings that differ."""
    path = s.out / "settings.json"
    if not path.exists() or not (s.out / "stages").is_dir():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable settings: the stage markers decide, as before
    new = json.loads(json.dumps(asdict(s), default=str))
    changed = {k: (old.get(k), v) for k, v in new.items() if k not in _SAFE_TO_CHANGE and old.get(k, v) != v}
    if changed:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(
            f"{s.out} holds a quickstart run made with other settings ({what}); its finished stages would "
            "be reused. Give another --out, or delete the folder to start over."
        )
