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
        "synth_markers", "interchannel_label", "classification",
        "synthetic: MarkerB spots co-localised with MarkerA or not; invisible to any single channel",
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
    epochs: int = 30
    baseline_epochs: int | None = None  # same budget as ChAda-ViT unless set
    seeds: int = 5
    threads: int | None = None
    umap: bool = True
    steps_cap: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, out: str | os.PathLike, fast: bool = False, **kw: Any) -> QuickstartSettings:
        if fast:
            base = dict(n_per_assay=24, synth_size=32, epochs=1, seeds=2, umap=False)
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
        result["seconds"] = time.perf_counter() - t0
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
    synth_m = synth.generate(data / "synth", n_per_assay=s.n_per_assay, size=s.synth_size, seed=0)
    real_m = bundled.prepare(data / "real")
    syn, real = _absolute_manifest(synth_m), _absolute_manifest(real_m)
    groups = {
        "synth_all": syn,
        "synth_markers": syn[_has_interchannel_label(syn)],
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


def stage_pretrain(s: QuickstartSettings, manifests: dict[str, str], encoder: str, model_name: str) -> dict[str, Any]:
    from chada.ssl import pretrain

    out = s.out / "pretrain" / encoder
    epochs = s.epochs if encoder == "chada_vit" or s.baseline_epochs is None else s.baseline_epochs
    overrides = [
        f"model.name={model_name}",
        f"data.manifest={manifests['pretrain_corpus']}",
        "data.split=train",
        f"data.size={s.synth_size}",
        f"optim.epochs={epochs}",
        f"run.output_dir={out}",
        "run.device=cpu",
        "data.num_workers=0",
    ]
    if s.threads:
        overrides.append(f"run.threads={s.threads}")
    if s.steps_cap:
        overrides.append(f"run.max_steps={s.steps_cap}")
    if s.fast:
        overrides += ["run.tensorboard=false", "run.progress=false"]
    folder = pretrain(_pretrain_config(), overrides=overrides, resume=(out / "checkpoint.pt").exists())
    teacher = Path(folder) / "teacher"
    if not (teacher / "config.json").exists():
        raise RuntimeError(f"pretraining of {encoder} finished without exporting {teacher}")
    return {"teacher": str(teacher), "epochs": epochs, "output": str(folder)}


def _has_interchannel_label(meta: pd.DataFrame) -> Any:
    col = meta["interchannel_label"]
    return col.notna() & (col.astype(str) != "")


def stage_embed(s: QuickstartSettings, manifests: dict[str, str], teachers: dict[str, str]) -> dict[str, Any]:
    from chada.eval.embed import embed_manifest
    from chada.eval.embeddings import load_embeddings
    from chada.features.extract import features_for_manifest

    emb_dir = s.out / "embeddings"
    files: dict[str, dict[str, str]] = {}
    for group in ("synth_all", "real_nuclei", "real_ihc"):
        files[group] = {}
        m = manifests[group]
        for enc, teacher in teachers.items():
            for tag, model, seed in ((enc, teacher, 0), (f"{enc}_untrained", ENCODERS[enc], 0)):
                out = emb_dir / group / f"{tag}.npz"
                if not out.exists():
                    embed_manifest(model, m, out, image_size=s.embed_size, seed=seed, batch_size=64, progress=not s.fast)
                files[group][tag] = str(out)
        for kind in ("handmade", "shortcut"):
            out = emb_dir / group / f"{kind}.npz"
            if not out.exists():
                features_for_manifest(m, kind, out, image_size=s.synth_size, progress=False)
            files[group][kind] = str(out)
    # The marker assays are rows of synth_all: take their rows instead of embedding the images again.
    files["synth_markers"] = {}
    for tag, path in files["synth_all"].items():
        out = emb_dir / "synth_markers" / f"{tag}.npz"
        if not out.exists():
            emb = load_embeddings(path)
            emb.subset(_has_interchannel_label(emb.meta).to_numpy().nonzero()[0]).save(out)
        files["synth_markers"][tag] = str(out)
    return {"files": files}


def evaluation_config(
    s: QuickstartSettings, files: dict[str, dict[str, str]], teachers: dict[str, str], manifests: dict[str, str]
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
                | {f"{enc}_untrained": {"model": name, "seed": 0} for enc, name in ENCODERS.items()},
            }
        ],
    }


def stage_evaluate(
    s: QuickstartSettings, files: dict[str, dict[str, str]], teachers: dict[str, str], manifests: dict[str, str]
) -> dict[str, Any]:
    import yaml

    from chada.eval.protocol import run_evaluation

    cfg = evaluation_config(s, files, teachers, manifests)
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
    teachers = {}
    for enc, name in ENCODERS.items():
        r = stages.run(f"pretrain_{enc}", lambda enc=enc, name=name: stage_pretrain(s, manifests, enc, name))
        teachers[enc] = r["teacher"]
    emb = stages.run("embed", lambda: stage_embed(s, manifests, teachers))
    ev = stages.run("evaluate", lambda: stage_evaluate(s, emb["files"], teachers, manifests))
    figs = stages.run("figures", lambda: stage_figures(s, manifests, teachers, emb["files"]))
    timings = {p.stem: json.loads(p.read_text()).get("seconds", 0.0) for p in sorted(stages.dir.glob("*.json"))}
    timings["total (this run)"] = time.perf_counter() - t_all
    return build_report(s, data, teachers, ev, figs, timings)
