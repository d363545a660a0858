"""The ``reconstruction:`` section of an evaluation config, and the results a task hands back."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chada.config_reader import check_keys, expected, integer, number
from chada.tasks.model_specs import TaskModelSpec, parse_task_models
from chada.tasks.reconstruction.decoder import _image_size

__all__ = [
    "ReconstructionExamples",
    "ReconstructionModelSpec",
    "ReconstructionOutcome",
    "ReconstructionTask",
    "parse_reconstruction_tasks",
]


ReconstructionModelSpec = TaskModelSpec  # the name this module exported before the shared parser


@dataclass
class ReconstructionTask:
    """One ``reconstruction:`` entry of an evaluation config (see :func:`parse_reconstruction_tasks`)."""

    name: str
    manifest: Any  # path or DataFrame
    models: dict[str, ReconstructionModelSpec]
    target_channel: str | int | None = None
    image_size: int | tuple[int, int] | None = None
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    target_params: int | None = None  # None: decoder_budget(image size)
    base_channels: int | None = None  # None: decoder_budget(image size)
    train_split: str | None = "train"
    test_split: str | None = "test"
    test_fraction: float | None = None
    default_test_fraction: float = 0.2
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    pool: str = "cls"
    normalize: str = "percentile"
    datasets: list[str] | None = None
    max_images: int | None = None
    n_examples: int = 4
    num_threads: int | None = 1
    num_workers: int = 0
    device: str = "cpu"
    root: Path | None = None
    #: ``"fp32"`` or ``"bf16"`` (autocast) for the encoders' forward pass (``chada evaluate --precision``).
    precision: str = "fp32"


@dataclass(eq=False)
class ReconstructionExamples:
    """A few test images of one task for the Fig. 16-style figure: ``inputs[k]`` ``[C-1, H, W]`` with
    ``input_names[k]``, ``targets`` ``[K, H, W]`` and ``predictions[model]`` ``[K, H, W]`` in [0, 1]
    (first seed), ``r2[model]`` the mean test R2 over seeds."""

    task: str
    target_name: str
    image_ids: list[str]
    inputs: list[np.ndarray]
    input_names: list[list[str]]
    targets: np.ndarray | None = None
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    r2: dict[str, float] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict) -> ReconstructionExamples:
        # kept in DataFrame.attrs, which pandas deep-copies on every operation: share, do not copy
        return self


@dataclass(eq=False)
class ReconstructionOutcome:
    """Result rows (the protocol's long format), example images and per-model decoder facts."""

    rows: list[dict[str, Any]]
    examples: ReconstructionExamples
    info: list[dict[str, Any]]

    def __deepcopy__(self, memo: dict) -> ReconstructionOutcome:
        return self


_TASK_KEYS = {
    "name", "manifest", "target_channel", "models", "image_size", "epochs", "batch_size", "lr",
    "target_params", "base_channels", "train_split", "test_split", "test_fraction", "seeds", "pool",
    "normalize", "datasets", "max_images", "n_examples", "num_threads", "torch_threads", "num_workers",
    "device", "root",
}  # fmt: skip


def parse_reconstruction_tasks(
    raw: Any,
    base: str | os.PathLike = ".",
    *,
    seeds: list[int] | None = None,
    test_fraction: float = 0.2,
    num_threads: int | None = 1,
) -> list[ReconstructionTask]:
    """Validate the ``reconstruction:`` section of an evaluation config.

    Each entry::

        name: actin
        manifest: data/bbbc021/manifest.csv   # relative to the config's folder
        target_channel: Actin        # name (rows without it are skipped), index, or omitted: the
                                     # manifest's reconstruction_target column
        models:                      # name -> folder / registered name, or a mapping
          chada: {model: runs/chada/final, family: learned, arch: chada_vit}
          chada_untrained: {model: chada_vit_moyen, seed: 0}   # random weights from seed 0
        image_size: 224              # resize (all images must share H, W)
        epochs: 20
        batch_size: 32
        lr: 1.0e-3
        target_params: auto          # auto: 5.2e6 * H * W / 224^2 (5.2 M at 224 px, 106 k at 32 px)
        base_channels: auto          # auto: 256 * side / 224 as a power of two in [16, 256]
        train_split: train           # values of the manifest's split column
        test_split: test             # (a seeded test_fraction split when the column is missing)
        seeds: 5                     # default: the config's seeds
        pool: cls                    # the encoder's embedding fed to the decoder
        max_images: null             # seeded subsample of the manifest rows
        n_examples: 4                # test images in reconstruction_<name>.png
        num_threads: 1               # torch CPU threads (default: the config's torch_threads)

    ``seeds`` drive the decoder initialisation and batch order (and the split without a split column);
    an untrained encoder is built once from its own ``seed``.
    """
    base = Path(base)
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError(f"reconstruction must be a list of tasks, got {type(raw).__name__}")
    default_seeds = list(seeds) if seeds is not None else list(range(5))
    tasks = [_parse_task(i, t, base, default_seeds, test_fraction, num_threads) for i, t in enumerate(raw)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"reconstruction task names must be unique, got {names}")
    return tasks


def _parse_task(
    i: int, t: Any, base: Path, default_seeds: list[int], test_fraction: float, num_threads: int | None
) -> ReconstructionTask:
    if not isinstance(t, dict):
        raise ValueError(f"reconstruction task {i}: expected a mapping, got {t!r}")
    label = t.get("name", f"reconstruction_{i}")
    where = f"reconstruction.{label}"
    check_keys(t, sorted(_TASK_KEYS), where)
    if t.get("manifest") is None:
        raise ValueError(f"reconstruction task {label!r}: manifest is required")
    manifest = t["manifest"]
    if not hasattr(manifest, "columns"):  # a path, not a DataFrame
        manifest = Path(os.path.expanduser(str(manifest)))
        manifest = manifest if manifest.is_absolute() else base / manifest
    models = parse_task_models(
        "reconstruction", label, t.get("models"), base, False, "folder or registered name"
    )
    tc = t.get("target_channel")
    if tc is not None and not isinstance(tc, (int, str)):
        raise ValueError(
            f"reconstruction task {label!r}: target_channel must be a name or an index, got {tc!r}"
        )
    size = t.get("image_size")
    if size is not None:
        size = _image_size(size if isinstance(size, int) else list(size))
        size = size[0] if size[0] == size[1] else size
    tp, bc = t.get("target_params", "auto"), t.get("base_channels", "auto")
    s = t.get("seeds", default_seeds)
    s = (
        list(range(integer(s, f"{where}.seeds", 1)))
        if isinstance(s, (int, str))
        else [integer(v, f"{where}.seeds", 0) for v in s]
    )
    if not s:
        raise ValueError(f"reconstruction task {label!r}: no seeds")
    tf = t.get("test_fraction")
    threads = t.get("num_threads", t.get("torch_threads", num_threads))
    task = ReconstructionTask(
        name=str(label),
        manifest=manifest,
        models=models,
        target_channel=tc,
        image_size=size,
        epochs=integer(t.get("epochs", 20), f"{where}.epochs", 0),
        batch_size=integer(t.get("batch_size", 32), f"{where}.batch_size", 1),
        lr=number(t.get("lr", 1e-3), f"{where}.lr", 0, strict_low=True),
        target_params=None if tp in (None, "auto") else integer(tp, f"{where}.target_params", 1),
        base_channels=None if bc in (None, "auto") else integer(bc, f"{where}.base_channels", 1),
        train_split=t.get("train_split", "train"),
        test_split=t.get("test_split", "test"),
        test_fraction=None if tf is None else number(tf, f"{where}.test_fraction"),
        default_test_fraction=float(test_fraction),
        seeds=s,
        pool=str(t.get("pool", "cls")),
        normalize=t.get("normalize", "percentile"),
        datasets=list(t["datasets"]) if t.get("datasets") else None,
        max_images=None
        if t.get("max_images") is None
        else integer(t["max_images"], f"{where}.max_images", 1),
        n_examples=integer(t.get("n_examples", 4), f"{where}.n_examples", 0),
        num_threads=None if threads is None else integer(threads, f"{where}.num_threads", 1),
        num_workers=integer(t.get("num_workers", 0), f"{where}.num_workers", 0),
        device=str(t.get("device", "cpu")),
        root=None if t.get("root") is None else base / Path(str(t["root"])),
    )
    if task.test_fraction is not None and not 0 < task.test_fraction < 1:
        raise expected(f"{where}.test_fraction", "a number in (0, 1)", task.test_fraction)
    return task
