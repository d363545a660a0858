"""One config-driven reconstruction task: read the manifest once, encode once, one decoder per model x seed."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from chada.encode.encoders import embed_images, resolve_encoder
from chada.eval.config import infer_family
from chada.models.precision import autocast, resolve_precision
from chada.tasks.reconstruction.config import (
    ReconstructionExamples,
    ReconstructionOutcome,
    ReconstructionTask,
)
from chada.tasks.reconstruction.decoder import METRICS, decoder_budget
from chada.tasks.reconstruction.fit import DecoderFit, _torch_threads, fit_decoder

__all__ = ["run_reconstruction_task"]

log = logging.getLogger(__name__)


def _target_index(spec: str | int | None, names: list[str], row: dict[str, Any]) -> int | None:
    """Index of the target channel in ``names`` (None: the row has no such channel, or < 2 channels)."""
    if len(names) < 2:
        return None
    if spec is None:
        spec = row.get("reconstruction_target")
        if spec is None or (isinstance(spec, float) and math.isnan(spec)) or spec == "":
            return None
        spec = str(spec)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip("-").isdigit()):
        i = int(spec)
        i = i if i >= 0 else len(names) + i
        return i if 0 <= i < len(names) else None
    low = [n.lower() for n in names]
    return low.index(spec.lower()) if spec.lower() in low else None


def _splits(
    task: ReconstructionTask, split_col: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` positions among the kept rows: the split column, else a seeded random split."""
    n = len(split_col) if split_col is not None else 0
    if task.test_fraction is None and split_col is not None:
        tr = np.flatnonzero(split_col == str(task.train_split))
        te = np.flatnonzero(split_col == str(task.test_split))
        if len(tr) and len(te):
            return tr, te
    if n < 2:
        raise ValueError(f"reconstruction task {task.name!r}: need at least 2 images")
    tf = task.test_fraction if task.test_fraction is not None else task.default_test_fraction
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(tf * n)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@torch.inference_mode()
def _embed(module: nn.Module, inputs: list[Tensor], pool: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    if hasattr(module, "forward_features") and hasattr(module, "forward_head"):
        return torch.from_numpy(embed_images(module, inputs, [pool], device=device, dtype=dtype)[pool])
    with autocast(dtype, device):
        z = module([x.to(device) for x in inputs])
    return z.float().cpu()


def run_reconstruction_task(task: ReconstructionTask, *, progress: bool = True) -> ReconstructionOutcome:
    """Run one reconstruction task: every model x seed, rows in the protocol's long format.

    The manifest is read once (images resized to ``image_size``, per-channel normalised as for
    ``chada embed``); every frozen encoder embeds each image without its target channel; targets are
    held in memory (``N x H x W`` float32: 13 k BBBC021 images at 224 px take 2.6 GB; use
    ``max_images`` to cap). Then one decoder per model and seed is trained on the train rows and
    scored on all test rows.
    """
    from rich.progress import Progress

    with _torch_threads(task.num_threads):
        ds, rows, target_idx, skipped = _select_rows(task)
        split_col = ds.frame["split"].astype(str).to_numpy()[rows] if "split" in ds.frame.columns else None
        splits = {seed: _splits(task, split_col, seed) for seed in task.seeds}
        example_pos = splits[task.seeds[0]][1][: task.n_examples]
        modules = _load_encoders(task)
        with Progress(disable=not progress, transient=True) as bar:
            feats, targets, examples = _encode_all(task, ds, rows, target_idx, modules, example_pos, bar)
            params, budget_channels = decoder_budget(tuple(targets.shape[1:]))
            target_params = task.target_params if task.target_params is not None else params
            base_channels = task.base_channels if task.base_channels is not None else budget_channels
            fit = bar.add_task(f"{task.name}: decoders", total=len(task.models) * len(task.seeds))
            out_rows: list[dict[str, Any]] = []
            info_rows: list[dict[str, Any]] = []
            for name, (_module, minfo) in modules.items():
                spec = task.models[name]
                family = infer_family(name, minfo, spec.family)
                arch = spec.arch or str(minfo.get("arch") or name)
                rows_m, res = _fit_model(task, name, family, arch, feats[name], targets, splits, example_pos,
                                         examples, target_params, base_channels, bar, fit)  # fmt: skip
                out_rows += rows_m
                info_rows.append(
                    dict(
                        task=task.name, model=name, family=family, arch=arch, target=examples.target_name,
                        image_size=list(targets.shape[1:]), embed_dim=int(feats[name].shape[1]),
                        decoder_params=int(res["decoder_params"]), target_params=int(target_params),
                        base_channels=int(base_channels), epochs=task.epochs, n_images=len(rows),
                        n_skipped=int(skipped), model_seed=minfo.get("seed"), source=minfo.get("source"),
                    )  # fmt: skip
                )
    sizes = [r["decoder_params"] for r in info_rows]
    if max(sizes) > 1.01 * min(sizes):
        log.warning(
            "reconstruction task %r: decoder sizes differ by more than 1 %% (%s): embedding sizes %s are "
            "large for target_params=%d; raise target_params",
            task.name, sizes, [r["embed_dim"] for r in info_rows], target_params,
        )  # fmt: skip
    return ReconstructionOutcome(out_rows, examples, info_rows)


def _select_rows(task: ReconstructionTask) -> tuple[Any, np.ndarray, list[int | None], int]:
    """``(dataset, kept row positions, target channel per row, number skipped)``: rows that have the
    target channel and one more, capped at ``max_images`` by a seeded draw."""
    from chada.data.dataset import ManifestDataset
    from chada.data.manifest import row_channel_names

    ds = ManifestDataset(
        task.manifest, root=task.root, datasets=task.datasets, size=task.image_size, normalize=task.normalize
    )
    target_idx: list[int | None] = [_target_index(task.target_channel, row_channel_names(r), r) for r in ds._rows]
    rows = np.array([i for i, t in enumerate(target_idx) if t is not None], dtype=np.int64)
    skipped = len(ds) - len(rows)
    if not len(rows):
        raise ValueError(
            f"reconstruction task {task.name!r}: no manifest row has the target channel "
            f"{task.target_channel if task.target_channel is not None else '(column reconstruction_target)'} "
            "and at least one other channel"
        )
    if skipped:
        log.warning("reconstruction task %r: %d rows without the target channel skipped", task.name, skipped)
    if task.max_images is not None and len(rows) > task.max_images:
        rows = np.sort(np.random.default_rng(0).choice(rows, task.max_images, replace=False))
    return ds, rows, target_idx, skipped


def _load_encoders(task: ReconstructionTask) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    modules: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    dev = torch.device(task.device)
    for name, spec in task.models.items():
        encoder = resolve_encoder(spec.model, seed=spec.seed)
        if not encoder.is_model:
            raise ValueError(
                f"reconstruction task {task.name!r}, model {name!r}: hand-made features are not an encoder "
                "the decoder can be put on; use a saved model folder or a registered name"
            )
        modules[name] = (encoder.to(dev).module, encoder.info)
    return modules


def _encode_all(
    task: ReconstructionTask,
    ds: Any,
    rows: np.ndarray,
    target_idx: list[int | None],
    modules: dict[str, tuple[nn.Module, dict[str, Any]]],
    example_pos: np.ndarray,
    bar: Any,
) -> tuple[dict[str, Tensor], Tensor, ReconstructionExamples]:
    """Every model's embedding ``[N, D]`` of every kept image without its target, the targets
    ``[N, H, W]``, and the example images (inputs and names; predictions are added later)."""
    from torch.utils.data import DataLoader, Subset

    n = len(rows)
    dev = torch.device(task.device)
    dtype, _ = resolve_precision(task.precision, dev)
    feats: dict[str, Tensor] = {}
    targets: Tensor | None = None
    first_row = str(ds._rows[rows[0]].get("image_id"))
    target_name = ""
    examples = ReconstructionExamples(task.name, "", [], [], [])
    where = {int(p): k for k, p in enumerate(example_pos)}
    slots: list[tuple[str, np.ndarray, list[str]] | None] = [None] * len(example_pos)
    loader = DataLoader(
        Subset(ds, rows.tolist()), batch_size=task.batch_size, shuffle=False,
        num_workers=task.num_workers, collate_fn=list,
    )  # fmt: skip
    read = bar.add_task(f"{task.name}: encoding", total=n)
    pos = 0
    for samples in loader:
        inputs, ys = [], []
        for s in samples:
            img, names = s["image"], list(s["channel_names"])
            t = target_idx[rows[pos + len(inputs)]]
            keep = [c for c in range(img.shape[0]) if c != t]
            inputs.append(img[keep])
            ys.append(img[t])
            k = where.get(pos + len(inputs) - 1)
            if k is not None:
                slots[k] = (s["image_id"], img[keep].numpy().copy(), [names[c] for c in keep])
            target_name = target_name or names[t]
        if targets is None:
            targets = torch.empty((n, *tuple(ys[0].shape)), dtype=torch.float32)
        sizes = {tuple(y.shape) for y in ys}
        if sizes != {tuple(targets.shape[1:])}:
            raise ValueError(
                f"reconstruction task {task.name!r}: images of sizes {sorted(sizes)} and "
                f"{tuple(targets.shape[1:])} (first: {first_row}); set image_size"
            )
        targets[pos : pos + len(ys)] = torch.stack(ys)
        for name, (module, _info) in modules.items():
            _store(feats, name, _embed(module, inputs, task.pool, dev, dtype), len(inputs), pos, n)
        pos += len(ys)
        bar.advance(read, len(ys))
    assert targets is not None
    examples.target_name = target_name
    for slot in slots:
        if slot is not None:
            examples.image_ids.append(str(slot[0]))
            examples.inputs.append(slot[1])
            examples.input_names.append(slot[2])
    return feats, targets, examples


def _store(feats: dict[str, Tensor], name: str, z: Tensor, expected: int, pos: int, n: int) -> None:
    """Put one batch's embeddings ``z`` ``[B, D]`` into ``feats[name]`` ``[n, D]`` at row ``pos``."""
    if z.ndim != 2 or len(z) != expected:
        raise ValueError(f"model {name!r} returned shape {tuple(z.shape)}; expected [{expected}, D]")
    if name not in feats:
        feats[name] = torch.empty((n, z.shape[1]), dtype=torch.float32)
    elif feats[name].shape[1] != z.shape[1]:
        raise ValueError(
            f"model {name!r}: embedding size {z.shape[1]} differs from {feats[name].shape[1]} "
            "(images with different channel counts and a concatenating pool?)"
        )
    feats[name][pos : pos + len(z)] = z


def _fit_model(
    task: ReconstructionTask, name: str, family: str, arch: str, z: Tensor, targets: Tensor,
    splits: dict[int, tuple[np.ndarray, np.ndarray]], example_pos: np.ndarray, examples: ReconstructionExamples,
    target_params: int, base_channels: int, bar: Any, fit: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """One decoder per seed for one model: result rows, and the last seed's fit."""
    r2s = []
    rows: list[dict[str, Any]] = []
    res: dict[str, Any] = {}
    dev = torch.device(task.device)
    for seed in task.seeds:
        bar.update(fit, description=f"{task.name}: decoder {name} seed {seed}")
        tr, te = splits[seed]
        keep = list(range(len(example_pos))) if seed == task.seeds[0] and len(example_pos) else None
        fit_options = DecoderFit(epochs=task.epochs, batch_size=task.batch_size, lr=task.lr, target_params=target_params,
                                 base_channels=base_channels, seed=seed, device=dev)  # fmt: skip
        res = fit_decoder(z[tr], targets[tr], z[te], targets[te], fit_options, keep=keep)
        if keep is not None:
            examples.predictions[name] = res["examples"]["prediction"]
            if examples.targets is None:
                examples.targets = res["examples"]["target"]
        r2s.append(res["r2"])
        for metric in METRICS:
            key = metric.removeprefix("recon_")
            rows.append(
                dict(
                    task=task.name, kind="reconstruction", model=name, family=family, arch=arch,
                    feature=task.pool, fraction=1.0, seed=seed, metric=metric, value=float(res[key]),
                    chance=float(res["chance"][key]), n_train=int(res["n_train"]), n_test=int(res["n_test"]),
                    ci_low=res["intervals"][key][0], ci_high=res["intervals"][key][1], design="split",
                )  # fmt: skip
            )
        bar.advance(fit)
    examples.r2[name] = float(np.mean(r2s))
    return rows, res
