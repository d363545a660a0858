"""The evaluation config: defaults, models, feature-file tasks, and each model's family.

Config (dict or YAML path; relative paths resolve against the YAML's folder)::

    seeds: 5                       # or a list of ints
    fractions: [0.01, 0.1, 1.0]
    feature_kinds: [cls, all]
    test_fraction: 0.2             # seeded stratified split when the data has no train/test split
    small_data: {max_images: 200, folds: 5}  # tasks with fewer labelled images: repeated stratified
                                   # k-fold over ALL images (one repeat per seed) instead of one split
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
        cross_validation: auto           # true / false / auto (auto: below small_data.max_images)
    diagnostics:
      cka_pairs: [[chada, chada_random]] # default: learned vs same-arch untrained, learned vs handmade
      shortcut_features: emb/shortcut.npz
      shortcut_targets: [cell_count, mean_intensity]  # default: detected by name
      n_components: 10
    out_dir: results/eval

Sections that run models (``reconstruction:``, ``torch_threads:``) are read by
:mod:`chada.tasks.evaluation`, which builds on the functions here.

Families: ``learned`` / ``untrained`` / ``handmade`` from the config, else the embedding file's info
(``family``, ``untrained``/``random_init``/``pretrained`` flags, ``kind``), else the model name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chada.config_reader import check_keys, choice, expected, integer, number

__all__ = [
    "DEFAULTS",
    "FAMILIES",
    "ModelSpec",
    "TaskSpec",
    "arch_name",
    "infer_family",
    "load_config",
    "normalize_config",
    "parse_models",
    "parse_settings",
    "parse_tasks",
    "seed_list",
]

FAMILIES = ("learned", "untrained", "handmade")

DEFAULTS: dict[str, Any] = {
    "seeds": 5,
    "fractions": [0.01, 0.1, 1.0],
    "feature_kinds": ["cls", "all"],
    "test_fraction": 0.2,
    "max_dim": 256,
    "probe": {"C": 1.0, "max_iter": 300},
    "knn": {"k": 20, "temperature": 0.07},
    "blas_threads": 1,
    # One fixed split of a small dataset tests a handful of images (9 and 16 in the quickstart's real
    # tasks), so one image moves a score by 6-11 points. Below this many labelled images every image
    # is tested instead: stratified k-fold, repeated once per seed.
    "small_data": {"max_images": 200, "folds": 5},
}
# Every top-level key of an evaluation config; reconstruction:, dense:, profiles: and torch_threads: are
# read by chada.tasks.evaluation (the sections that run models or profile feature tables).
TOP_KEYS = (*DEFAULTS, "models", "tasks", "diagnostics", "out_dir", "base_dir", "reconstruction", "dense",
            "profiles", "torch_threads")  # fmt: skip
DIAGNOSTICS_KEYS = ("cka_pairs", "shortcut_features", "shortcut_targets", "n_components", "max_rows")
MODEL_KEYS = ("name", "path", "family", "arch", "untrained_of")
TASK_KEYS = (
    "name", "label_column", "label", "kind", "train_split", "test_split", "test_fraction", "split_fraction",
    "embeddings", "models", "cross_validation", "feature_kinds", "fractions", "seeds",
)  # fmt: skip


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
    cross_validation: bool | None = None  # None: k-fold when the task has fewer than small_data.max_images


def seed_list(v: Any, where: str = "seeds") -> list[int]:
    """``5`` -> ``[0, 1, 2, 3, 4]``; a list of ints stays as it is."""
    if isinstance(v, (list, tuple)):
        return [integer(s, where, 0) for s in v]
    return list(range(integer(v, where, 1)))


def _path(p: Any, base: Path) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else base / p


def load_config(config: dict | str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """``(mapping, base folder)``: a YAML path is read, and its folder is the base of relative paths."""
    base = Path.cwd()
    if not isinstance(config, dict):
        import yaml

        cpath = Path(config)
        if not cpath.exists():
            raise FileNotFoundError(f"evaluation config {cpath} not found")
        if cpath.is_dir():
            raise IsADirectoryError(f"evaluation config {cpath} is a folder, expected a YAML file")
        config = yaml.safe_load(cpath.read_text()) or {}
        base = cpath.resolve().parent
        if not isinstance(config, dict):
            raise ValueError(
                f"{cpath}: an evaluation config must be a mapping (models:, tasks:, ...), got a "
                f"{type(config).__name__}; see configs/eval/example.yaml"
            )
    return config, Path(config.get("base_dir", base))


def parse_settings(config: dict[str, Any], base: Path) -> dict[str, Any]:
    """The run-wide settings: :data:`DEFAULTS` overridden by the config, paths made absolute."""
    check_keys(config, TOP_KEYS)
    settings = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    for section in ("probe", "knn", "small_data"):
        given = config.get(section) or {}
        if not isinstance(given, dict):
            raise expected(section, "a mapping", given)
        check_keys(given, DEFAULTS[section], section)
        settings[section] = {**DEFAULTS[section], **given}
    seed_list(settings["seeds"])  # checked here; kept as written (5, or a list) for the run record
    settings["max_dim"] = integer(settings["max_dim"], "max_dim", 1)
    settings["test_fraction"] = number(settings["test_fraction"], "test_fraction", 0, strict_low=True)
    if settings["blas_threads"] is not None:
        settings["blas_threads"] = integer(settings["blas_threads"], "blas_threads", 1)
    settings["probe"]["max_iter"] = integer(settings["probe"]["max_iter"], "probe.max_iter", 1)
    settings["knn"]["k"] = integer(settings["knn"]["k"], "knn.k", 1)
    settings["knn"]["temperature"] = number(
        settings["knn"]["temperature"], "knn.temperature", 0, strict_low=True
    )
    small = settings["small_data"]
    small["folds"] = integer(small["folds"], "small_data.folds", 2)
    small["max_images"] = integer(small["max_images"], "small_data.max_images", 0)
    if not isinstance(config.get("diagnostics") or {}, dict):
        raise expected("diagnostics", "a mapping", config["diagnostics"])
    check_keys(config.get("diagnostics") or {}, DIAGNOSTICS_KEYS, "diagnostics")
    settings["diagnostics"] = dict(config.get("diagnostics") or {})
    if "shortcut_features" in settings["diagnostics"] and settings["diagnostics"]["shortcut_features"]:
        settings["diagnostics"]["shortcut_features"] = _path(
            settings["diagnostics"]["shortcut_features"], base
        )
    settings["out_dir"] = _path(config["out_dir"], base) if config.get("out_dir") else None
    settings["base_dir"] = base
    return settings


def parse_models(config: dict[str, Any], base: Path) -> dict[str, ModelSpec]:
    """The ``models:`` section: name -> :class:`ModelSpec`."""
    raw_models = config.get("models") or {}
    if isinstance(raw_models, list):
        if not all(isinstance(m, dict) and "name" in m for m in raw_models):
            raise ValueError("models: a list of models needs a mapping with a name for each entry")
        raw_models = {m["name"]: m for m in raw_models}
    if not isinstance(raw_models, dict):
        raise ValueError(f"models: expected a mapping name -> path, got {type(raw_models).__name__}")
    models: dict[str, ModelSpec] = {}
    for name, m in raw_models.items():
        if isinstance(m, (str, os.PathLike)):
            m = {"path": m}
        if not isinstance(m, dict):
            raise expected(f"models.{name}", "a path or a mapping", m)
        check_keys(m, MODEL_KEYS, f"models.{name}")
        fam = m.get("family")
        if fam is not None:
            choice(fam, f"models.{name}.family", FAMILIES)
        models[str(name)] = ModelSpec(
            str(name),
            _path(m["path"], base) if m.get("path") else None,
            fam,
            m.get("arch"),
            m.get("untrained_of"),
        )
    return models


def parse_tasks(
    config: dict[str, Any], base: Path, settings: dict[str, Any], models: dict[str, ModelSpec]
) -> list[TaskSpec]:
    """The ``tasks:`` section; a task naming its own embedding files adds them to ``models``."""
    tasks = []
    raw_tasks = config.get("tasks") or []
    if not isinstance(raw_tasks, list):
        raise ValueError(f"tasks: expected a list of task mappings, got {type(raw_tasks).__name__}")
    for i, t in enumerate(raw_tasks):
        if not isinstance(t, dict):
            raise ValueError(f"task {i}: expected a mapping with name, label_column, kind, got {t!r}")
        check_keys(t, TASK_KEYS, f"tasks.{t.get('name', i)}")
        if "label_column" not in t and "label" not in t:
            raise ValueError(f"task {i} ({t.get('name')}): label_column is required")
        where = f"tasks.{t.get('name', i)}"
        kind = choice(t.get("kind", "classification"), f"{where}.kind", ("classification", "regression"))
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
        cv = t.get("cross_validation", "auto")
        if cv not in ("auto", None, True, False):
            raise expected(f"{where}.cross_validation", "true, false or auto", cv)
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
                fractions=[
                    number(f, f"{where}.fractions", 0, strict_low=True)
                    for f in t.get("fractions", settings["fractions"])
                ],
                seeds=seed_list(t.get("seeds", settings["seeds"]), f"{where}.seeds"),
                cross_validation=None if cv in ("auto", None) else bool(cv),
            )
        )
    for f in {f for t in tasks for f in t.fractions}:
        if not 0 < f <= 1:
            raise expected("fractions", "numbers in (0, 1]", f)
    return tasks


def normalize_config(
    config: dict | str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, ModelSpec], list[TaskSpec]]:
    """Load (if a path) and validate the feature-file part of a config: ``(settings, models, tasks)``.

    :func:`chada.tasks.evaluation.normalize_config` reads the whole config, reconstruction included.
    """
    raw, base = load_config(config)
    settings = parse_settings(raw, base)
    models = parse_models(raw, base)
    if not raw.get("tasks"):
        raise ValueError("the config names no tasks (tasks:)")
    return settings, models, parse_tasks(raw, base, settings, models)


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


def arch_name(spec: ModelSpec, info: dict[str, Any]) -> str:
    """The architecture a model's row is grouped under: the config's, the file's, else its name."""
    if spec.arch:
        return spec.arch
    for key in ("arch", "architecture", "model_arch"):
        if info.get(key):
            return str(info[key])
    model = str(info.get("model", info.get("model_name", spec.name)))
    return re.sub(r"[_-]?(untrained|random|rand_init|scratch|seed\d+|s\d+)$", "", Path(model).name.lower())
