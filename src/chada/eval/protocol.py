"""The frozen-feature evaluation protocol: every task x model x regime x seed x feature kind.

``run_evaluation(config, out_dir)`` reads embedding files (:class:`chada.eval.embeddings.EmbeddingSet`),
runs linear probes, weighted kNN (k=20, T=0.07) and 1-NN on 1/10/100 % stratified fractions of each
training split for every seed, then the diagnostics of issue 12 (baseline ratios, CKA, participation
ratio, shortcut analyses), writes the report and returns the long-format results.

Config (dict or YAML path; relative paths resolve against the YAML's folder)::

    seeds: 5                       # or a list of ints
    fractions: [0.01, 0.1, 1.0]
    feature_kinds: [cls, all]
    test_fraction: 0.2             # seeded stratified split when the data has no train/test split
    max_dim: 256                   # PCA before the linear probe when D > max_dim
    blas_threads: 1                # BLAS/OpenMP threads during the run (null: library default)
    probe: {C: 1.0, max_iter: 300} # C may be a list: chosen by 3-fold CV on the training rows
    knn: {k: 20, temperature: 0.07}
    models:                        # name -> path, or name -> {path, family, arch, untrained_of}
      chada: {path: emb/chada.npz, family: learned, arch: chada_vit}
      chada_random: {path: emb/chada_random.npz, family: untrained, arch: chada_vit}
      handmade: {path: emb/handmade.npz, family: handmade}
    tasks:
      - name: cell_type
        label_column: label
        kind: classification       # or regression
        train_split: train         # values of the meta "split" column
        test_split: test
        embeddings: {chada: other.npz}   # optional per-task paths (default: the models' paths)
        models: [chada, handmade]        # optional subset
    torch_threads: 1               # torch CPU threads of the reconstruction decoders (null: torch default)
    reconstruction:                # channel reconstruction (BBBC021 protocol), see chada.eval.reconstruction
      - name: actin
        manifest: data/bbbc021/manifest.csv
        target_channel: Actin
        models: {chada: runs/chada/final, chada_untrained: {model: chada_vit_moyen, seed: 0}}
        image_size: 224
    diagnostics:
      cka_pairs: [[chada, chada_random]] # default: learned vs same-arch untrained, learned vs handmade
      shortcut_features: emb/shortcut.npz
      shortcut_targets: [cell_count, mean_intensity]  # default: detected by name
      n_components: 10
    out_dir: results/eval

Families: ``learned`` / ``untrained`` / ``handmade`` from the config, else the embedding file's info
(``family``, ``untrained``/``random_init``/``pretrained`` flags, ``kind``), else the model name.
Seeds drive the low-data subsets and the split when there is no split column; with a fixed split at
100 % a probe is deterministic, so it is computed once and the same value is recorded for each seed.

Reconstruction tasks (``reconstruction:``, parsed by :func:`chada.eval.reconstruction.parse_reconstruction_tasks`)
run frozen encoders on a manifest and add rows of kind ``"reconstruction"`` (metrics ``recon_mse``,
``recon_mae``, ``recon_r2``; fraction 1.0; chance = the metric of predicting the training mean, R2 ~ 0)
to the same results table; a config may hold only reconstruction tasks.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.eval.diagnostics import (
    chance_level,
    chance_normalised,
    linear_cka,
    participation_ratio,
    score_ratio,
    shortcut_explained,
    shortcut_probes,
)
from chada.eval.embeddings import EmbeddingSet, load_embeddings
from chada.eval.knn import knn_accuracy, knn_r2
from chada.eval.lowdata import stratified_fraction_indices, stratified_split
from chada.eval.probes import linear_probe_classification, ridge_probe_regression
from chada.eval.reconstruction import parse_reconstruction_tasks, run_reconstruction_task

__all__ = [
    "FAMILIES",
    "ModelSpec",
    "TaskSpec",
    "align_rows",
    "compute_diagnostics",
    "infer_family",
    "normalize_config",
    "run_evaluation",
    "run_task",
]

FAMILIES = ("learned", "untrained", "handmade")
RESULT_COLUMNS = [
    "task", "kind", "model", "family", "arch", "feature", "fraction", "seed",
    "metric", "value", "chance", "n_train", "n_test",
]  # fmt: skip
DIAG_COLUMNS = ["measure", "model", "family", "other", "task", "feature", "fraction", "metric", "value"]

DEFAULTS: dict[str, Any] = {
    "seeds": 5,
    "fractions": [0.01, 0.1, 1.0],
    "feature_kinds": ["cls", "all"],
    "test_fraction": 0.2,
    "max_dim": 256,
    "probe": {"C": 1.0, "max_iter": 300},
    "knn": {"k": 20, "temperature": 0.07},
    "blas_threads": 1,
    # Reconstruction decoders are many tiny conv/linear steps: intra-op threading only adds sync overhead.
    # On the loaded 2-core machine (load ~7) a 32-px decoder fit (10 epochs x 72 images) took 1.5-4.9 s
    # with 1 torch thread and 36-38 s with 2.
    "torch_threads": 1,
}


@dataclass
class ModelSpec:
    name: str
    path: Path | None
    family: str | None = None
    arch: str | None = None
    untrained_of: str | None = None


@dataclass
class TaskSpec:
    name: str
    label_column: str
    kind: str
    embeddings: dict[str, Path]
    train_split: str | None = "train"
    test_split: str | None = "test"
    test_fraction: float | None = None
    feature_kinds: list[str] = field(default_factory=lambda: ["cls", "all"])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: list(range(5)))


# ----------------------------------------------------------------------------- config
def _seeds(v: Any) -> list[int]:
    if isinstance(v, int):
        if v < 1:
            raise ValueError(f"seeds must be >= 1, got {v}")
        return list(range(v))
    return [int(s) for s in v]


def _path(p: Any, base: Path) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else base / p


def normalize_config(
    config: dict | str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, ModelSpec], list[TaskSpec]]:
    """Load (if a path) and validate a config; returns ``(settings, models, tasks)``."""
    base = Path.cwd()
    if not isinstance(config, dict):
        import yaml

        cpath = Path(config)
        if not cpath.exists():
            raise FileNotFoundError(f"evaluation config {cpath} not found")
        config = yaml.safe_load(cpath.read_text()) or {}
        base = cpath.resolve().parent
        if not isinstance(config, dict):
            raise ValueError(f"{cpath}: the config must be a mapping")
    base = Path(config.get("base_dir", base))
    settings = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    settings["probe"] = {**DEFAULTS["probe"], **(config.get("probe") or {})}
    settings["knn"] = {**DEFAULTS["knn"], **(config.get("knn") or {})}
    settings["diagnostics"] = dict(config.get("diagnostics") or {})
    if "shortcut_features" in settings["diagnostics"] and settings["diagnostics"]["shortcut_features"]:
        settings["diagnostics"]["shortcut_features"] = _path(
            settings["diagnostics"]["shortcut_features"], base
        )
    settings["out_dir"] = config.get("out_dir")
    settings["base_dir"] = base

    raw_models = config.get("models") or {}
    if isinstance(raw_models, list):
        raw_models = {m["name"]: m for m in raw_models}
    models: dict[str, ModelSpec] = {}
    for name, m in raw_models.items():
        if isinstance(m, (str, os.PathLike)):
            m = {"path": m}
        if not isinstance(m, dict):
            raise ValueError(f"model {name!r}: expected a path or a mapping, got {m!r}")
        fam = m.get("family")
        if fam is not None and fam not in FAMILIES:
            raise ValueError(f"model {name!r}: family must be one of {FAMILIES}, got {fam!r}")
        models[str(name)] = ModelSpec(
            str(name),
            _path(m["path"], base) if m.get("path") else None,
            fam,
            m.get("arch"),
            m.get("untrained_of"),
        )

    settings["reconstruction"] = parse_reconstruction_tasks(
        config.get("reconstruction"),
        base,
        seeds=_seeds(settings["seeds"]),
        test_fraction=float(settings["test_fraction"]),
        num_threads=None if settings["torch_threads"] is None else int(settings["torch_threads"]),
    )
    raw_tasks = config.get("tasks") or []
    if not raw_tasks and not settings["reconstruction"]:
        raise ValueError("the config names no tasks (neither tasks: nor reconstruction:)")
    tasks = []
    for i, t in enumerate(raw_tasks):
        if "label_column" not in t and "label" not in t:
            raise ValueError(f"task {i} ({t.get('name')}): label_column is required")
        kind = t.get("kind", "classification")
        if kind not in ("classification", "regression"):
            raise ValueError(f"task {t.get('name')}: kind must be classification or regression, got {kind!r}")
        if t.get("embeddings"):
            emb = {str(k): _path(v, base) for k, v in t["embeddings"].items()}
            for k in emb:
                models.setdefault(k, ModelSpec(k, emb[k]))
        else:
            names = t.get("models") or list(models)
            missing = [n for n in names if n not in models or models[n].path is None]
            if missing:
                raise ValueError(f"task {t.get('name')}: no embeddings path for models {missing}")
            emb = {n: models[n].path for n in names}  # type: ignore[misc]
        if t.get("models"):
            emb = {k: v for k, v in emb.items() if k in t["models"]}
        label = t.get("label_column", t.get("label"))
        tasks.append(
            TaskSpec(
                name=str(t.get("name", label)),
                label_column=str(label),
                kind=kind,
                embeddings=emb,
                train_split=t.get("train_split", "train"),
                test_split=t.get("test_split", "test"),
                test_fraction=t.get("test_fraction", t.get("split_fraction")),
                feature_kinds=list(t.get("feature_kinds", settings["feature_kinds"])),
                fractions=[float(f) for f in t.get("fractions", settings["fractions"])],
                seeds=_seeds(t.get("seeds", settings["seeds"])),
            )
        )
    for f in {f for t in tasks for f in t.fractions}:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
    return settings, models, tasks


_UNTRAINED = re.compile(r"untrained|random|rand_init|scratch")
_HANDMADE = re.compile(r"handmade|hand_made|handcrafted|cellprofiler|shortcut|features?$")


def infer_family(name: str, info: dict[str, Any] | None = None, explicit: str | None = None) -> str:
    """``learned`` / ``untrained`` / ``handmade`` from the config, the file's info, or the name."""
    if explicit:
        return explicit
    info = info or {}
    fam = info.get("family")
    if fam in FAMILIES:
        return str(fam)
    if any(str(info.get(k, "")).lower() in ("handmade", "shortcut", "features") for k in ("kind", "source")):
        return "handmade"
    if (
        info.get("untrained") is True
        or info.get("random_init") is True
        or info.get("pretrained") is False
        or info.get("source") == "random_init"
    ):
        return "untrained"
    low = name.lower()
    if _UNTRAINED.search(low):
        return "untrained"
    if _HANDMADE.search(low):
        return "handmade"
    return "learned"


def _arch(spec: ModelSpec, info: dict[str, Any]) -> str:
    if spec.arch:
        return spec.arch
    for key in ("arch", "architecture", "model_arch"):
        if info.get(key):
            return str(info[key])
    model = str(info.get("model", info.get("model_name", spec.name)))
    return re.sub(r"[_-]?(untrained|random|rand_init|scratch|seed\d+|s\d+)$", "", Path(model).name.lower())


# ----------------------------------------------------------------------------- data
class _Loader:
    """Loads each embedding file once, with its rows sorted by image_id (same split for every model)."""

    def __init__(self) -> None:
        self.cache: dict[Path, EmbeddingSet] = {}

    def __call__(self, path: Path) -> EmbeddingSet:
        if path not in self.cache:
            emb = load_embeddings(path)
            if "image_id" in emb.meta.columns:
                order = np.argsort(emb.meta["image_id"].astype(str).to_numpy(), kind="stable")
                emb = emb.subset(order)
            self.cache[path] = emb
        return self.cache[path]


def resolve_kind(emb: EmbeddingSet, kind: str) -> str | None:
    """The feature kind to use for ``kind``: itself, or the only kind of a single-kind file."""
    if kind in emb.features:
        return kind
    if len(emb.features) == 1:
        return next(iter(emb.features))
    return None


def align_rows(a: EmbeddingSet, b: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(ia, ib)`` of the images present in both sets, matched by ``image_id``."""
    for e in (a, b):
        if "image_id" not in e.meta.columns:
            raise ValueError("cannot align embedding files without an image_id column")
    ids_a = a.meta["image_id"].astype(str).to_numpy()
    ids_b = b.meta["image_id"].astype(str).to_numpy()
    pos_b = {v: i for i, v in enumerate(ids_b)}
    ia = np.array([i for i, v in enumerate(ids_a) if v in pos_b], dtype=np.int64)
    ib = np.array([pos_b[ids_a[i]] for i in ia], dtype=np.int64)
    return ia, ib


def _key(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _splits(task: TaskSpec, meta: pd.DataFrame, labels: np.ndarray, seed: int, default_tf: float):
    """``(train_idx, test_idx)`` positions: the meta's split column, else a seeded stratified split."""
    regression = task.kind == "regression"
    if task.test_fraction is None and "split" in meta.columns:
        split = meta["split"].astype(str).to_numpy()
        tr = np.flatnonzero(split == str(task.train_split))
        te = np.flatnonzero(split == str(task.test_split))
        if len(tr) and len(te):
            return tr, te, True
    tf = float(task.test_fraction if task.test_fraction is not None else default_tf)
    tr, te = stratified_split(labels, tf, seed, regression=regression)
    return tr, te, False


def _probe_metrics(
    task: TaskSpec,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    settings: dict,
    seed: int,
) -> dict[str, float]:
    knn = settings["knn"]
    if task.kind == "classification":
        lin = linear_probe_classification(
            x_tr, y_tr, x_te, y_te, C=settings["probe"]["C"], max_iter=int(settings["probe"]["max_iter"]),
            max_dim=settings["max_dim"], seed=seed,
        )  # fmt: skip
        return {
            "linear_top1": lin["accuracy"],
            "knn_top1": knn_accuracy(
                x_tr, y_tr, x_te, y_te, k=int(knn["k"]), temperature=float(knn["temperature"])
            ),
            "nn1_top1": knn_accuracy(x_tr, y_tr, x_te, y_te, k=1, temperature=float(knn["temperature"])),
        }
    lin = ridge_probe_regression(x_tr, y_tr, x_te, y_te, max_dim=settings["max_dim"], seed=seed)
    return {
        "linear_r2": lin["r2"],
        "knn_r2": knn_r2(x_tr, y_tr, x_te, y_te, k=int(knn["k"]), temperature=float(knn["temperature"])),
        "nn1_r2": knn_r2(x_tr, y_tr, x_te, y_te, k=1, temperature=float(knn["temperature"])),
    }


def run_task(
    task: TaskSpec,
    model: ModelSpec,
    emb: EmbeddingSet,
    settings: dict[str, Any],
    cache: dict[str, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """All (feature kind x fraction x seed x metric) rows of one task on one model's embeddings."""
    cache = {} if cache is None else cache
    if task.label_column not in emb.meta.columns:
        raise ValueError(
            f"task {task.name!r}: column {task.label_column!r} not in the embeddings of {model.name!r} "
            f"(columns: {list(emb.meta.columns)})"
        )
    col = emb.meta[task.label_column]
    if task.kind == "regression":
        col = pd.to_numeric(col, errors="coerce")
    keep = np.flatnonzero(col.notna().to_numpy())
    if len(keep) < 2:
        raise ValueError(f"task {task.name!r}: fewer than 2 rows with a {task.label_column!r} value")
    emb = emb.subset(keep) if len(keep) < len(emb) else emb
    labels = col.to_numpy()[keep]
    labels = labels.astype(np.float64) if task.kind == "regression" else np.asarray([str(v) for v in labels])
    family = infer_family(model.name, emb.info, model.family)
    arch = _arch(model, emb.info)
    rows: list[dict[str, Any]] = []
    for seed in task.seeds:
        tr, te, _fixed = _splits(task, emb.meta, labels, seed, float(settings["test_fraction"]))
        chance_full = None
        for frac in task.fractions:
            sub = tr[
                stratified_fraction_indices(labels[tr], frac, seed, regression=task.kind == "regression")
            ]
            chance = chance_level(labels[sub], labels[te], task.kind)
            chance_full = chance if frac >= 1 else chance_full
            for feat in task.feature_kinds:
                src = resolve_kind(emb, feat)
                if src is None:
                    continue
                x = emb.get(src)
                # The probe is a deterministic function of (rows, features, seed only via PCA/CV): reuse it.
                key = _key(
                    np.frombuffer(str((id(x), src, model.name, task.name)).encode(), np.uint8), sub, te
                )
                if key not in cache:
                    cache[key] = _probe_metrics(
                        task, x[sub], labels[sub], x[te], labels[te], settings, seed=0
                    )
                for metric, value in cache[key].items():
                    rows.append(
                        dict(
                            task=task.name,
                            kind=task.kind,
                            model=model.name,
                            family=family,
                            arch=arch,
                            feature=feat,
                            fraction=frac,
                            seed=seed,
                            metric=metric,
                            value=float(value),
                            chance=float(chance),
                            n_train=len(sub),
                            n_test=len(te),
                        )  # fmt: skip
                    )
    return rows


# ----------------------------------------------------------------------------- diagnostics
_COUNT = re.compile(r"(^|_)(cell|cells|nuclei|nucleus)?_?count($|_)|^n_?(cells|nuclei)$")
_MEAN_INT = re.compile(r"mean_?intensity|intensity_?mean|^mean(_chmean)?$|^mean_ch(mean)?")


def _feature_names(emb: EmbeddingSet, kind: str) -> list[str] | None:
    names = emb.info.get("feature_names")
    if isinstance(names, dict):
        names = names.get(kind)
    if isinstance(names, list) and len(names) == emb.get(kind).shape[1]:
        return [str(n) for n in names]
    return None


def shortcut_targets(
    emb: EmbeddingSet, kind: str, wanted: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Shortcut quantities ``name -> [N]`` from the shortcut file's meta columns or named features.

    ``wanted`` names columns exactly; by default the first column matching a cell/nuclei count and the
    first matching a mean intensity (e.g. ``mean_intensity``, ``mean_chmean``) are used.
    """
    table: dict[str, np.ndarray] = {}
    for c in emb.meta.columns:
        vals = pd.to_numeric(emb.meta[c], errors="coerce")
        if vals.notna().any():
            table[str(c)] = vals.to_numpy(dtype=np.float64)
    names = _feature_names(emb, kind)
    if names:
        x = emb.get(kind)
        for j, n in enumerate(names):
            table.setdefault(n, x[:, j].astype(np.float64))
    if wanted:
        missing = [w for w in wanted if w not in table]
        if missing:
            raise ValueError(f"shortcut targets {missing} not found; available: {sorted(table)[:40]}")
        return {w: table[w] for w in wanted}
    out = {}
    for pattern in (_COUNT, _MEAN_INT):
        hit = next((n for n in table if pattern.search(n.lower()) and n not in ("label", "target")), None)
        if hit is not None:
            out[hit] = table[hit]
    return out


def _model_file(name: str, models: dict[str, ModelSpec], tasks: list[TaskSpec]) -> Path | None:
    spec = models.get(name)
    if spec is not None and spec.path is not None:
        return spec.path
    return next((t.embeddings[name] for t in tasks if name in t.embeddings), None)


def _cap(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def compute_diagnostics(
    results: pd.DataFrame,
    settings: dict[str, Any],
    models: dict[str, ModelSpec],
    tasks: list[TaskSpec],
    loader: Any | None = None,
) -> pd.DataFrame:
    """Long-format diagnostics (columns :data:`DIAG_COLUMNS`) for every learned model."""
    loader = loader or _Loader()
    diag = settings.get("diagnostics", {})
    max_rows = int(diag.get("max_rows", 5000))
    rows: list[dict[str, Any]] = []

    def add(measure, model, family, other, task, feature, fraction, metric, value):
        rows.append(dict(measure=measure, model=model, family=family, other=other, task=task, feature=feature,
                         fraction=fraction, metric=metric, value=float(value)))  # fmt: skip

    # 1. baseline score ratios, from the mean over seeds (higher-is-better metrics only)
    results = results[~results.metric.isin(["recon_mse", "recon_mae"])]
    if len(results):
        mean = results.groupby(
            ["task", "model", "family", "arch", "feature", "fraction", "metric"], as_index=False
        )[["value", "chance"]].mean()
        for (task, feat, frac, metric), g in mean.groupby(["task", "feature", "fraction", "metric"]):
            learned = g[g.family == "learned"]
            base = g[g.family != "learned"]
            for _, m in learned.iterrows():
                for _, b in base.iterrows():
                    add(
                        "ratio",
                        m.model,
                        b.family,
                        b.model,
                        task,
                        feat,
                        frac,
                        metric,
                        score_ratio(b.value, m.value),
                    )
                    add("chance_normalised", m.model, b.family, b.model, task, feat, frac, metric,
                        chance_normalised(b.value, m.value, m.chance))  # fmt: skip

    # families/archs of every model that has a file
    names = sorted({n for t in tasks for n in t.embeddings})
    info: dict[str, tuple[str, str, EmbeddingSet]] = {}
    for n in names:
        path = _model_file(n, models, tasks)
        if path is None:
            continue
        emb = loader(path)
        spec = models.get(n, ModelSpec(n, path))
        info[n] = (infer_family(n, emb.info, spec.family), _arch(spec, emb.info), emb)
    kinds = list(dict.fromkeys(k for t in tasks for k in t.feature_kinds))

    # 2. participation ratio of every embedding
    for n, (fam, _arch_name, emb) in info.items():
        for k in emb.features:
            x = emb.get(k)
            add(
                "participation_ratio",
                n,
                fam,
                "",
                "",
                k,
                np.nan,
                "",
                participation_ratio(x[_cap(len(x), max_rows)]),
            )

    # 3. CKA pairs
    pairs = diag.get("cka_pairs")
    if pairs is None:
        pairs = []
        for n, (fam, arch, _e) in info.items():
            if fam != "learned":
                continue
            for o, (ofam, oarch, _oe) in info.items():
                spec = models.get(o)
                if (
                    ofam == "untrained"
                    and ((spec and spec.untrained_of == n) or oarch == arch)
                    or ofam == "handmade"
                ):
                    pairs.append([n, o])
    for a, b in pairs:
        if a not in info or b not in info:
            raise ValueError(
                f"cka pair {a!r}-{b!r}: no embeddings for {[m for m in (a, b) if m not in info]}"
            )
        ea, eb = info[a][2], info[b][2]
        ia, ib = align_rows(ea, eb)
        if len(ia) < 3:
            continue
        sel = _cap(len(ia), max_rows)
        for k in kinds:
            ka, kb = resolve_kind(ea, k), resolve_kind(eb, k)
            if ka is None or kb is None:
                continue
            add(
                "cka",
                a,
                info[b][0],
                b,
                "",
                k,
                np.nan,
                "",
                linear_cka(ea.get(ka)[ia[sel]], eb.get(kb)[ib[sel]]),
            )

    # 4. shortcut features: explained variance of the embedding, and shortcut probes
    sc_path = diag.get("shortcut_features")
    if sc_path:
        sc = loader(Path(sc_path))
        sc_kind = "shortcut" if "shortcut" in sc.features else next(iter(sc.features))
        targets_all = shortcut_targets(sc, sc_kind, diag.get("shortcut_targets"))
        ncomp = int(diag.get("n_components", 10))
        folds = int(diag.get("folds", 5))
        for n, (fam, _arch_name, emb) in info.items():
            ie, isc = align_rows(emb, sc)
            if len(ie) < max(folds, 4):
                continue
            sel = _cap(len(ie), max_rows)
            s_x = sc.get(sc_kind)[isc[sel]]
            good = np.isfinite(s_x).all(0)
            for k in kinds:
                kk = resolve_kind(emb, k)
                if kk is None:
                    continue
                x = emb.get(kk)[ie[sel]]
                if good.any():
                    r = shortcut_explained(s_x[:, good], x, n_components=ncomp, folds=folds)
                    add(
                        "shortcut_r2_pcs",
                        n,
                        fam,
                        "shortcut",
                        "",
                        k,
                        np.nan,
                        f"top{r['n_components']}",
                        r["r2_weighted"],
                    )
                tg = {t: v[isc[sel]] for t, v in targets_all.items()}
                for t, v in shortcut_probes(x, tg, folds=folds).items():
                    add("shortcut_probe_r2", n, fam, t, "", k, np.nan, t, v)
    return pd.DataFrame(rows, columns=DIAG_COLUMNS)


# ----------------------------------------------------------------------------- driver
def run_evaluation(
    config: dict | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    print_table: bool = True,
    write: bool = True,
    plots: bool = True,
) -> pd.DataFrame:
    """Run the whole protocol; return long-format results (columns ``RESULT_COLUMNS``).

    With ``write`` the report (Markdown/JSON/CSV tables, diagnostics, Fig.1/Fig.4-style plots, and the
    reconstruction example figures) goes to ``out_dir`` (default: the config's ``out_dir``, else
    ``./eval_results``). The diagnostics table is attached as ``results.attrs["diagnostics"]``; for
    reconstruction tasks ``results.attrs["reconstruction_info"]`` (per model: embedding size, decoder
    parameters, ...) and ``results.attrs["reconstruction_examples"]``
    (:class:`chada.eval.reconstruction.ReconstructionExamples`, one per task).
    """
    from threadpoolctl import threadpool_limits

    from chada.eval import report

    settings, models, tasks = normalize_config(config)
    out = Path(out_dir or settings.get("out_dir") or "eval_results")
    # Hundreds of small fits: multi-threaded BLAS only adds spin-wait overhead, and on a loaded 2-core
    # machine it was measured ~30x slower than one thread (PCA of 450 x 600: 5.8 s vs 0.23 s).
    with threadpool_limits(limits=settings["blas_threads"]):
        results = _run(settings, models, tasks, progress)
    if print_table:
        report.print_tables(results, results.attrs["diagnostics"])
    if write:
        extra: dict[str, Any] = {"elapsed_s": results.attrs["elapsed_s"]}
        if results.attrs.get("reconstruction_info"):
            extra["reconstruction"] = results.attrs["reconstruction_info"]
        report.write_report(
            results,
            results.attrs["diagnostics"],
            out,
            extra=extra,
            plots=plots,
            reconstruction_examples=results.attrs.get("reconstruction_examples"),
        )
    return results


def _run(
    settings: dict[str, Any], models: dict[str, ModelSpec], tasks: list[TaskSpec], progress: bool
) -> pd.DataFrame:
    loader = _Loader()
    units = [(t, n) for t in tasks for n in t.embeddings]
    rows: list[dict[str, Any]] = []
    cache: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("evaluating", total=len(units))
        for task, name in units:
            bar.update(job, description=f"{task.name} / {name}")
            spec = models.get(name, ModelSpec(name, task.embeddings[name]))
            rows.extend(run_task(task, spec, loader(task.embeddings[name]), settings, cache))
            bar.advance(job)
    recon_info: list[dict[str, Any]] = []
    recon_examples = []
    for rtask in settings.get("reconstruction") or []:
        outcome = run_reconstruction_task(rtask, progress=progress)
        rows.extend(outcome.rows)
        recon_info.extend(outcome.info)
        recon_examples.append(outcome.examples)
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    diagnostics = compute_diagnostics(results, settings, models, tasks, loader)
    results.attrs["diagnostics"] = diagnostics
    results.attrs["elapsed_s"] = time.perf_counter() - t0
    if recon_info:
        results.attrs["reconstruction_info"] = recon_info
        results.attrs["reconstruction_examples"] = recon_examples
    return results
