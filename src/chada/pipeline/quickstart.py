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
6. ``report``: ``OUT/report.md`` and ``OUT/report.html``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chada.models.hub import atomic_write_bytes

__all__ = ["QuickstartSettings", "run_quickstart", "ENCODERS", "TASKS", "RECONSTRUCTION_TASK"]

RECONSTRUCTION_TASK = "synth_actin_reconstruction"

# name -> (registered architecture size, DINO pool)
ENCODERS: dict[str, str] = {
    "chada_vit": "chada_vit_test",
    "one_channel_vit": "one_channel_vit_test",
    "inter_channel_vit": "inter_channel_vit_test",
}

# task name -> (embedding group, label column, kind, what it tests)
TASKS: dict[str, tuple[str, str, str, str]] = {
    "synth_interchannel": (
        "synth_markers_eval", "interchannel_label", "classification",
        "synthetic (held-out seed): MarkerB on the same side of the cell as MarkerA or the opposite one; "
        "invisible to any single channel",
    ),
    "synth_size": ("synth_all", "label", "classification", "synthetic: cell size class (visible in any channel)"),
    "synth_radius": ("synth_all", "target", "regression", "synthetic: cell radius in pixels (regression)"),
    "real_nuclei_size": (
        "real_nuclei", "label", "classification",
        "real DSB2018 nuclei crops (1 channel): nucleus-area tercile (a weak, honest label)",
    ),
    "real_ihc_dab": (
        "real_ihc", "label", "classification",
        "real IHC tiles (haematoxylin/eosin/DAB): DAB-high vs DAB-low (depends on one channel)",
    ),
}  # fmt: skip


@dataclass
class QuickstartSettings:
    out: Path
    fast: bool = False
    n_per_assay: int = 160
    synth_size: int = 64
    embed_size: int = 32
    epochs: int = 180
    marker_pattern: str = "domain"  # see chada.data.synth: the inter-channel label a tiny model can learn
    eval_n_per_assay: int = 600  # held-out marker images (another seed) for the inter-channel task
    jobs: int | None = None  # encoders pretrained at once, 1 thread each (default: all 3 if >1 core)
    baseline_epochs: int | None = None  # same budget as ChAda-ViT unless set
    seeds: int = 5
    threads: int | None = None
    umap: bool = True
    steps_cap: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def epochs_of(self, encoder: str) -> int:
        """DINO epochs of one encoder: ``epochs``, or ``baseline_epochs`` for the baselines when set."""
        return self.epochs if encoder == "chada_vit" or self.baseline_epochs is None else self.baseline_epochs

    @classmethod
    def make(cls, out: str | os.PathLike, fast: bool = False, **kw: Any) -> QuickstartSettings:
        if fast:
            base = dict(n_per_assay=24, synth_size=32, epochs=1, seeds=2, umap=False, eval_n_per_assay=24)
        else:
            base = {}
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(out=Path(out), fast=fast, **base)


class Stages:
    """Done-markers under ``OUT/stages``: a stage that finished is not run again."""

    def __init__(self, out: Path, log: Callable[[str], None]) -> None:
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log

    def done(self, name: str) -> dict[str, Any] | None:
        p = self.dir / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def run(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        prev = self.done(name)
        if prev is not None:
            self.log(f"[{name}] already done ({prev.get('seconds', 0):.0f} s), reusing it")
            return prev
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        result = fn() or {}
        result.setdefault("seconds", time.perf_counter() - t0)  # a stage run elsewhere reports its own
        atomic_write_bytes(self.dir / f"{name}.json", json.dumps(result, indent=2, default=str).encode())
        self.log(f"[{name}] done in {result['seconds']:.0f} s")
        return result


def _absolute_manifest(manifest: Path) -> pd.DataFrame:
    """Manifest rows with file paths made absolute, so rows from several folders can be combined."""
    from chada.data.manifest import load_manifest, split_list

    df = load_manifest(manifest)
    root = manifest.parent
    for col in ("channel_files", "file"):
        if col in df.columns:
            df[col] = df[col].map(
                lambda v: ";".join(str((root / p).resolve()) for p in split_list(v)) if isinstance(v, str) and v else v
            )
    return df


def _write(df: pd.DataFrame, path: Path) -> Path:
    from chada.data.manifest import write_manifest

    return write_manifest(df.reset_index(drop=True), path)


# ----------------------------------------------------------------------------------------- stages
def stage_data(s: QuickstartSettings) -> dict[str, Any]:
    from chada.data import bundled, synth

    data = s.out / "data"
    synth_m = synth.generate(
        data / "synth", n_per_assay=s.n_per_assay, size=s.synth_size, seed=0, marker_pattern=s.marker_pattern
    )
    # The inter-channel task is scored on marker images from another seed: never seen in pretraining,
    # and enough of them that the kNN comparison is not lost in sampling noise.
    eval_m = synth.generate(
        data / "synth_eval", n_per_assay=s.eval_n_per_assay, size=s.synth_size, seed=1,
        assays=["markers_2ch", "coloc_5ch"], marker_pattern=s.marker_pattern,
    )  # fmt: skip
    real_m = bundled.prepare(data / "real")
    syn, real = _absolute_manifest(synth_m), _absolute_manifest(real_m)
    groups = {
        "synth_all": syn,
        "synth_markers": syn[_has_interchannel_label(syn)],
        "synth_markers_eval": _absolute_manifest(eval_m),
        "real_nuclei": real[real["channel_names"].str.count(";") == 0],
        "real_ihc": real[real["channel_names"].str.count(";") > 0],
    }
    paths = {g: str(_write(df, data / f"{g}.csv")) for g, df in groups.items()}
    corpus = pd.concat([syn, real], ignore_index=True)
    corpus = corpus[corpus["split"].astype(str) == "train"]
    paths["pretrain_corpus"] = str(_write(corpus, data / "pretrain_corpus.csv"))
    counts = {g: len(df) for g, df in groups.items()} | {"pretrain_corpus": len(corpus)}
    return {"manifests": paths, "images": counts}


def _pretrain_config() -> Path:
    from importlib.resources import files

    return Path(str(files("chada") / "configs" / "quickstart.yaml"))


def _model_overrides(model_name: str) -> list[str]:
    """The config's ``model.overrides`` that ``model_name`` has: the Inter-Channel ViT has no positional
    embedding, so the shared recipe's ``pos_embed_std`` does not apply to it."""
    import dataclasses

    from chada.models.registry import get_arch, model_spec
    from chada.ssl.config import load_config

    fields = {f.name for f in dataclasses.fields(get_arch(model_spec(model_name)[0]).config_class)}
    keep = {k: v for k, v in load_config(_pretrain_config()).model.overrides.items() if k in fields}
    return [f"model.overrides={json.dumps(keep)}"]


def stage_pretrain(
    s: QuickstartSettings, manifests: dict[str, str], encoder: str, model_name: str, quiet: bool = False
) -> dict[str, Any]:
    """DINO for one encoder; ``quiet`` (parallel runs: 1 thread each) turns off its progress bar and
    TensorBoard."""
    from chada.ssl import load_config, pretrain

    out = s.out / "pretrain" / encoder
    epochs = s.epochs_of(encoder)
    overrides = [
        f"model.name={model_name}",
        *_model_overrides(model_name),
        f"data.manifest={manifests['pretrain_corpus']}",
        "data.split=train",
        f"data.size={s.synth_size}",
        f"optim.epochs={epochs}",
        f"run.output_dir={out}",
        "run.device=cpu",
        "data.num_workers=0",
    ]
    recipe = load_config(_pretrain_config())
    for key, warm in (("optim.warmup_epochs", recipe.optim.warmup_epochs),
                      ("dino.warmup_teacher_temp_epochs", recipe.dino.warmup_teacher_temp_epochs)):  # fmt: skip
        if warm > epochs:  # a short run (--fast, --epochs): warm-ups cannot be longer than the run
            overrides.append(f"{key}={epochs}")
    if s.threads or quiet:
        overrides.append(f"run.threads={s.threads or 1}")
    if s.steps_cap:
        overrides.append(f"run.max_steps={s.steps_cap}")
    if s.fast or quiet:
        overrides += ["run.tensorboard=false", "run.progress=false"]
    t0 = time.perf_counter()
    folder = pretrain(_pretrain_config(), overrides=overrides, resume=(out / "checkpoint.pt").exists())
    teacher, init = Path(folder) / "teacher", Path(folder) / "init"
    for f in (teacher, init):
        if not (f / "config.json").exists():
            raise RuntimeError(f"pretraining of {encoder} finished without exporting {f}")
    return {
        "teacher": str(teacher), "untrained": str(init), "epochs": epochs, "output": str(folder),
        "seconds": time.perf_counter() - t0, "parallel": quiet,
    }  # fmt: skip


def _pretrain_all(s: QuickstartSettings, stages: Stages, manifests: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Pretrain every encoder; with ``jobs > 1`` they run at once in spawned processes, 1 thread each,
    so that on 2 cores both cores stay busy until the last run ends."""
    import multiprocessing as mp

    # Three 1-thread runs on 2 cores finish sooner than two at a time: no core idles at the end.
    jobs = s.jobs if s.jobs is not None else (len(ENCODERS) if (os.cpu_count() or 1) > 1 else 1)
    pending = [enc for enc in ENCODERS if stages.done(f"pretrain_{enc}") is None]
    if jobs <= 1 or len(pending) <= 1:
        return {
            enc: stages.run(f"pretrain_{enc}", lambda enc=enc, name=name: stage_pretrain(s, manifests, enc, name))
            for enc, name in ENCODERS.items()
        }  # fmt: skip
    n = min(jobs, len(pending))
    stages.log(f"[pretrain] {', '.join(pending)}: {n} at once; logs in {s.out / 'pretrain'}/<encoder>/log.csv")
    pool = mp.get_context("spawn").Pool(n, initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        jobs_ = {enc: pool.apply_async(stage_pretrain, (s, manifests, enc, ENCODERS[enc], True)) for enc in pending}
        _watch_pretraining(s, jobs_, pool)
        # Stages.run records each result; a failed run raises here with its own traceback.
        results = {enc: stages.run(f"pretrain_{enc}", lambda enc=enc: jobs_[enc].get()) for enc in ENCODERS}
        pool.close()
        return results
    finally:
        # On an error or Ctrl-C, stop the other runs now (their checkpoints let a re-run resume them).
        pool.terminate()
        pool.join()


def _exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: exit when the quickstart process dies (e.g. killed), instead of training
    on as an orphan."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _watch_pretraining(s: QuickstartSettings, jobs: dict[str, Any], pool: Any = None) -> None:
    """One progress bar per encoder (epochs done, read from each run's ``log.csv``) until all finish or
    one fails. A pool process that dies (killed, out of memory) never reports back; the pool quietly
    replaces it, so its job would wait forever: that ends the run with a RuntimeError instead."""
    from tqdm.auto import tqdm

    workers = list(getattr(pool, "_pool", []))  # the processes the jobs were handed to

    total = {enc: s.epochs_of(enc) for enc in jobs}
    bars = {
        enc: tqdm(total=total[enc], desc=f"dino {enc}", unit="epoch", position=i, leave=True, disable=s.fast,
                  dynamic_ncols=True, bar_format="{desc:<26}{percentage:3.0f}%|{bar}| {n:.1f}/{total} epochs [{elapsed}]")
        for i, enc in enumerate(jobs)
    }  # fmt: skip
    try:
        while True:
            for enc, bar in bars.items():
                bar.n = total[enc] if jobs[enc].ready() else _last_epoch(s.out / "pretrain" / enc / "log.csv")
                bar.refresh()
            finished = [j for j in jobs.values() if j.ready()]
            if len(finished) == len(jobs) or any(not j.successful() for j in finished):
                return
            dead = [w for w in workers if w.exitcode is not None]
            if dead:
                pending = [enc for enc, j in jobs.items() if not j.ready()]
                raise RuntimeError(
                    f"a pretraining process (pid {dead[0].pid}) ended with exit code {dead[0].exitcode} (killed, or out "
                    f"of memory?) before {', '.join(pending)} finished; logs in {s.out / 'pretrain'}. Run the same "
                    "`chada quickstart` command again: it resumes from the checkpoints"
                )
            time.sleep(2.0)
    finally:
        for bar in bars.values():
            bar.close()


def _last_epoch(log_csv: Path) -> float:
    """The epoch column of the last row of a DINO ``log.csv`` (0 before the first row)."""
    try:
        with open(log_csv, "rb") as f:
            f.seek(max(0, log_csv.stat().st_size - 4096))
            last = f.read().decode(errors="replace").strip().splitlines()[-1].split(",")
        return float(last[1])
    except (OSError, IndexError, ValueError):
        return 0.0


def _has_interchannel_label(meta: pd.DataFrame) -> Any:
    col = meta["interchannel_label"]
    return col.notna() & (col.astype(str) != "")


def stage_embed(
    s: QuickstartSettings, manifests: dict[str, str], teachers: dict[str, str], untrained: dict[str, str]
) -> dict[str, Any]:
    from chada.eval.embed import embed_manifest
    from chada.features.extract import features_for_manifest

    emb_dir = s.out / "embeddings"
    files: dict[str, dict[str, str]] = {}
    for group in ("synth_all", "synth_markers_eval", "real_nuclei", "real_ihc"):
        files[group] = {}
        m = manifests[group]
        for enc, teacher in teachers.items():
            # The untrained copy is the pretraining run's own step-0 export: same architecture, init, seed.
            for tag, model in ((enc, teacher), (f"{enc}_untrained", untrained[enc])):
                out = emb_dir / group / f"{tag}.npz"
                if not out.exists():
                    embed_manifest(model, m, out, image_size=s.embed_size, batch_size=64, progress=not s.fast)
                files[group][tag] = str(out)
        for kind in ("handmade", "shortcut"):
            out = emb_dir / group / f"{kind}.npz"
            if not out.exists():
                features_for_manifest(m, kind, out, image_size=s.synth_size, progress=False)
            files[group][kind] = str(out)
    return {"files": files}


def evaluation_config(
    s: QuickstartSettings,
    files: dict[str, dict[str, str]],
    teachers: dict[str, str],
    manifests: dict[str, str],
    untrained: dict[str, str],
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for enc in ENCODERS:
        models[enc] = {"path": files["synth_all"][enc], "family": "learned", "arch": enc}
        models[f"{enc}_untrained"] = {
            "path": files["synth_all"][f"{enc}_untrained"], "family": "untrained", "arch": enc, "untrained_of": enc,
        }  # fmt: skip
    models["handmade"] = {"path": files["synth_all"]["handmade"], "family": "handmade"}
    tasks = []
    for name, (group, label, kind, _) in TASKS.items():
        model_names = [m for m in models if m in files[group]]
        tasks.append(
            {
                "name": name,
                "label_column": label,
                "kind": kind,
                "train_split": "train",
                "test_split": "test",
                "embeddings": {m: files[group][m] for m in model_names},
                "models": model_names,
            }
        )
    return {
        "seeds": s.seeds,
        "fractions": [0.01, 0.1, 1.0],
        "feature_kinds": ["cls", "all"],
        "models": models,
        "tasks": tasks,
        "diagnostics": {"shortcut_features": files["synth_all"]["shortcut"]},
        # The paper's BBBC021 task on the synthetic 3-channel assay: Actin from DAPI + Mito, decoder
        # from the frozen CLS embedding, the same decoder size for every encoder.
        "reconstruction": [
            {
                "name": RECONSTRUCTION_TASK,
                "manifest": manifests["synth_all"],
                "datasets": ["cellpaint_3ch"],
                "target_channel": "Actin",
                "image_size": s.embed_size,
                "epochs": 3 if s.fast else 15,
                "seeds": s.seeds,
                "models": {enc: teachers[enc] for enc in ENCODERS}
                | {f"{enc}_untrained": untrained[enc] for enc in ENCODERS},
            }
        ],
    }


def stage_evaluate(
    s: QuickstartSettings,
    files: dict[str, dict[str, str]],
    teachers: dict[str, str],
    manifests: dict[str, str],
    untrained: dict[str, str],
) -> dict[str, Any]:
    import yaml

    from chada.eval.protocol import run_evaluation

    cfg = evaluation_config(s, files, teachers, manifests, untrained)
    out = s.out / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "eval_config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    results = run_evaluation(cfg, out, progress=not s.fast, print_table=False)
    return {"out": str(out), "rows": len(results)}


def _attention_image(manifests: dict[str, str]) -> tuple[Any, list[str], str]:
    """A 5-channel synthetic test image with co-localised markers (label 1) for the attention grid."""
    from chada.data.manifest import load_manifest, read_row_image, row_channel_names

    df = load_manifest(manifests["synth_markers"])
    df = df[df["channel_names"].str.count(";") == 4]
    pick = df[(df["split"] == "test") & (df["interchannel_label"].astype(float) == 1)]
    row = (pick if len(pick) else df).iloc[0]
    return read_row_image(row, Path(manifests["synth_markers"]).parent), row_channel_names(row), str(row["image_id"])


def stage_figures(s: QuickstartSettings, manifests: dict[str, str], teachers: dict[str, str], files) -> dict[str, Any]:
    import torch

    import chada
    from chada.data.normalize import normalize_channels
    from chada.eval.embeddings import load_embeddings
    from chada.viz.attention import compute_model_attention, plot_attention_grid
    from chada.viz.projection import plot_projection, project

    fig_dir = s.out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    image, names, image_id = _attention_image(manifests)
    x = torch.as_tensor(normalize_channels(image), dtype=torch.float32)
    x = torch.nn.functional.interpolate(x[None], size=(s.embed_size, s.embed_size), mode="bilinear", antialias=True)[0]
    results = [
        compute_model_attention(chada.load_model(teachers["chada_vit"]), x, "ChAda-ViT (DINO)"),
        compute_model_attention(chada.load_model(teachers["one_channel_vit"]), x, "One-Channel ViT (DINO)"),
    ]
    attn_png = fig_dir / "attention.png"
    plot_attention_grid(x, results, names, attn_png, title=f"Last-layer CLS attention, synthetic image {image_id}")

    sets = [load_embeddings(files[g]["chada_vit"]) for g in ("synth_all", "real_nuclei", "real_ihc")]
    methods = ("pca", "umap") if s.umap else ("pca",)
    coords, stats = project(sets, feature="cls", color_by="label", methods=methods, seed=0, names=["synthetic", "DSB2018 nuclei", "IHC"])
    proj_png = fig_dir / "projection.png"
    plot_projection(coords, stats, proj_png, color_by="label")
    coords.to_csv(fig_dir / "projection.csv", index=False)
    return {"attention": str(attn_png), "projection": str(proj_png), "projection_stats": stats, "image_id": image_id}


# ---------------------------------------------------------------------------------------- driver
def run_quickstart(settings: QuickstartSettings, log: Callable[[str], None] = print) -> Path:
    """Run every stage (skipping finished ones) and return the path of ``report.md``."""
    import torch

    from chada.pipeline.summary import build_report

    s = settings
    s.out.mkdir(parents=True, exist_ok=True)
    if s.threads:
        torch.set_num_threads(s.threads)
    atomic_write_bytes(s.out / "settings.json", json.dumps(asdict(s), indent=2, default=str).encode())
    stages = Stages(s.out, log)
    t_all = time.perf_counter()
    data = stages.run("data", lambda: stage_data(s))
    manifests = data["manifests"]
    runs = _pretrain_all(s, stages, manifests)
    teachers = {enc: r["teacher"] for enc, r in runs.items()}
    untrained = {enc: r["untrained"] for enc, r in runs.items()}
    emb = stages.run("embed", lambda: stage_embed(s, manifests, teachers, untrained))
    ev = stages.run("evaluate", lambda: stage_evaluate(s, emb["files"], teachers, manifests, untrained))
    figs = stages.run("figures", lambda: stage_figures(s, manifests, teachers, emb["files"]))
    timings = {p.stem: json.loads(p.read_text()).get("seconds", 0.0) for p in sorted(stages.dir.glob("*.json"))}
    timings["total (this run)"] = time.perf_counter() - t_all
    return build_report(s, data, teachers, ev, figs, timings)
