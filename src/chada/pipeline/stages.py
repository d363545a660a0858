"""The quickstart's stages after pretraining: data, embeddings, evaluation, figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from chada.io import atomic_write_bytes, atomic_write_text
from chada.pipeline.settings import ENCODERS, RECONSTRUCTION_TASK, TASKS, QuickstartSettings

__all__ = [
    "EMBED_GROUPS", "evaluation_config", "mean_pooled_groups", "stage_data", "stage_embed", "stage_evaluate",
    "stage_figures",
]  # fmt: skip


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


def _has_interchannel_label(meta: pd.DataFrame) -> Any:
    col = meta["interchannel_label"]
    return col.notna() & (col.astype(str) != "")


def _channel_counts(manifest: str) -> list[int]:
    from chada.data.manifest import load_manifest

    names = load_manifest(manifest)["channel_names"].astype(str)
    return sorted({len(n.split(";")) for n in names})


def mean_pooled_groups(manifests: dict[str, str]) -> dict[str, list[int]]:
    """Embedding groups whose images have more than one channel count -> their channel counts. There a
    concatenating pool (the One-Channel ViT's ``C x D`` per-channel CLS tokens) cannot give one array
    of one width, so the encoder stores the mean over channels instead."""
    counts = {g: _channel_counts(manifests[g]) for g in EMBED_GROUPS}
    return {g: c for g, c in counts.items() if len(c) > 1}


EMBED_GROUPS = ("synth_all", "synth_markers_eval", "real_nuclei", "real_ihc")


def stage_embed(
    s: QuickstartSettings, manifests: dict[str, str], teachers: dict[str, str], untrained: dict[str, str],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    import chada
    from chada.encode.embed import embed_manifest
    from chada.encode.handmade import features_for_manifest
    from chada.encode.options import ImageOptions, RunOptions
    from chada.models.precision import precision_name, resolve_precision

    emb_dir = s.out / "embeddings"
    dtype, reason = resolve_precision(s.precision)
    log(f"[embed] precision: {reason}")
    mixed = mean_pooled_groups(manifests)
    pooled: dict[str, list[str]] = {}
    for run, teacher in teachers.items():
        variable = getattr(chada.load_model(teacher), "variable_size_pools", None) or {}
        if variable and mixed:
            pooled[run] = sorted(mixed)
            if run in ENCODERS:  # once per encoder, not per pretraining seed, file or pool
                log(f"[embed] {run}: on {', '.join(f'{g} ({mixed[g]} channels)' for g in mixed)} the per-channel "
                    f"tokens are averaged ({', '.join(f'{k!r} -> {v!r}' for k, v in variable.items())}): one "
                    "fixed-size vector per image is needed when the channel count varies; the other groups "
                    "keep the concatenation")  # fmt: skip
    files: dict[str, dict[str, str]] = {}
    for group in EMBED_GROUPS:
        files[group] = {}
        m = manifests[group]
        log(f"[embed] {group}: {2 * len(teachers)} encoders (trained + untrained) and the hand-made features")
        for run, teacher in teachers.items():
            # The untrained copy is the pretraining run's own step-0 export: same architecture, init, seed.
            for tag, model in ((run, teacher), (f"{run}_untrained", untrained[run])):
                out = emb_dir / group / f"{tag}.npz"
                if not out.exists():
                    embed_manifest(model, m, out, image=ImageOptions(size=s.embed_size),
                                   run=RunOptions(batch_size=64, progress=not s.fast, dtype=dtype))  # fmt: skip
                files[group][tag] = str(out)
        for kind in ("handmade", "shortcut"):
            out = emb_dir / group / f"{kind}.npz"
            if not out.exists():
                features_for_manifest(m, kind, out, image=ImageOptions(size=s.synth_size),
                                      run=RunOptions(batch_size=64, progress=not s.fast))
            files[group][kind] = str(out)
    return {"files": files, "mean_pooled": pooled, "mixed_groups": mixed, "precision": precision_name(dtype)}


def evaluation_config(
    s: QuickstartSettings,
    files: dict[str, dict[str, str]],
    teachers: dict[str, str],
    manifests: dict[str, str],
    untrained: dict[str, str],
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for run, (enc, _seed) in s.runs().items():
        models[run] = {"path": files["synth_all"][run], "family": "learned", "arch": enc}
        models[f"{run}_untrained"] = {
            "path": files["synth_all"][f"{run}_untrained"], "family": "untrained", "arch": enc, "untrained_of": run,
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
                "models": {run: teachers[run] for run in s.runs()}
                | {f"{run}_untrained": untrained[run] for run in s.runs()},
            }
        ],
    }


def stage_evaluate(
    s: QuickstartSettings,
    files: dict[str, dict[str, str]],
    teachers: dict[str, str],
    manifests: dict[str, str],
    untrained: dict[str, str],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    import yaml

    from chada.tasks.evaluation import run_evaluation

    cfg = evaluation_config(s, files, teachers, manifests, untrained)
    out = s.out / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "eval_config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    results = run_evaluation(cfg, out, progress=not s.fast, print_table=False, log=lambda m: log(f"[evaluate] {m}"))
    return {"out": str(out), "rows": len(results)}


def _attention_image(manifests: dict[str, str]) -> tuple[Any, list[str], str]:
    """A 5-channel synthetic test image with co-localised markers (label 1) for the attention grid."""
    from chada.data.manifest import load_manifest, read_row_image, row_channel_names

    df = load_manifest(manifests["synth_markers"])
    df = df[df["channel_names"].str.count(";") == 4]
    pick = df[(df["split"] == "test") & (df["interchannel_label"].astype(float) == 1)]
    row = (pick if len(pick) else df).iloc[0]
    return read_row_image(row, Path(manifests["synth_markers"]).parent), row_channel_names(row), str(row["image_id"])


def stage_figures(
    s: QuickstartSettings, manifests: dict[str, str], teachers: dict[str, str], files, log: Callable[[str], None] = print
) -> dict[str, Any]:  # fmt: skip
    import torch

    import chada
    from chada.data.normalize import normalize_channels
    from chada.encode.store import load_embeddings
    from chada.viz.attention import compute_model_attention
    from chada.viz.attention_figure import plot_attention_grid
    from chada.viz.projection import project
    from chada.viz.projection_figure import plot_projection

    fig_dir = s.out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log("[figures] attention grid: ChAda-ViT and the One-Channel ViT on a 5-channel test image")
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
    coords, stats = project(
        sets, feature="cls", color_by="label", methods=methods, seed=0, names=["synthetic", "DSB2018 nuclei", "IHC"],
        log=lambda m: log(f"[figures] joint projection: {m}"),
    )  # fmt: skip
    proj_png = fig_dir / "projection.png"
    plot_projection(coords, stats, proj_png, color_by="label")
    atomic_write_text(fig_dir / "projection.csv", coords.to_csv(index=False))
    log(f"[figures] attention grid and projection drawn in {time.perf_counter() - t0:.0f} s")
    return {"attention": str(attn_png), "projection": str(proj_png), "projection_stats": stats, "image_id": image_id}
