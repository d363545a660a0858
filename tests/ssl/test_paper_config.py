"""Every option of configs/idrcell100k_moyen.yaml is consumed: changing its value changes what the trainer
builds or does.

The test walks the YAML's keys, so an option added to the file without an entry here fails. Each key
has an alternative value and is checked one of three ways:

- ``build``: the trainer built with the alternative differs in :func:`fingerprint` (model, head, loss,
  optimizer, schedules, augmentation, dataset, device, precision, compilation, initial weights);
- ``fit``: a short ``fit`` with the optimisation step stubbed out differs (log rows, checkpoints,
  TensorBoard); ``loader``: the DataLoader the trainer builds gets other arguments;
- a named test elsewhere checks the key's effect on the optimisation step itself.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from chada.ssl.config import load_config
from chada.ssl.trainer import Trainer
from tests.helpers import REPO

CONFIG = REPO / "configs" / "idrcell100k_moyen.yaml"

# key -> (alternative value, how it is checked[, extra overrides both sides need for the key to matter])
CASES: dict[str, tuple] = {
    "model.name": ("chada_vit_test", "build"),
    "model.overrides": ({"depth": 2, "drop_path_rate": 0.2}, "build"),
    "head.out_dim": (1024, "build"),
    "head.hidden_dim": (512, "build"),
    "head.bottleneck_dim": (128, "build"),
    "head.nlayers": (2, "build"),
    "head.norm_last_layer": (False, "build"),
    "dino.student_temp": (0.2, "build"),
    "dino.warmup_teacher_temp": (0.03, "build"),
    "dino.teacher_temp": (0.05, "build"),
    "dino.warmup_teacher_temp_epochs": (20, "build"),
    "dino.center_momentum": (0.8, "build"),
    "dino.momentum_teacher": (0.99, "build"),
    "dino.momentum_teacher_final": (0.999, "build"),
    "dino.freeze_last_layer_epochs": (3, "build"),
    "optim.epochs": (300, "build"),
    "optim.batch_size_per_gpu": (4, "build"),
    "optim.lr": (5e-4, "build"),
    "optim.scale_lr_with_batch": (False, "build"),
    "optim.min_lr": (1e-5, "build"),
    "optim.warmup_epochs": (5, "build"),
    "optim.weight_decay": (0.05, "build"),
    "optim.weight_decay_end": (0.3, "build"),
    "optim.clip_grad": (1.0, "test_recipe.py::test_two_steps_equal_the_reference_dino_step"),
    "augment.global_size": (112, "build"),
    "augment.local_size": (48, "build", ["augment.n_local=2"]),  # the paper file has no local crops
    "augment.n_global": (3, "build"),
    "augment.n_local": (2, "build"),
    "augment.global_scale": ([0.3, 1.0], "build"),
    "augment.local_scale": ([0.1, 0.3], "build", ["augment.n_local=2"]),
    "augment.extra.p_hflip": (0.1, "build"),
    "augment.extra.p_vflip": (0.5, "build"),
    "augment.extra.p_rot90": (0.5, "build"),
    "augment.extra.jitter_p": (0.3, "build"),
    "augment.extra.brightness": (0.2, "build"),
    "augment.extra.contrast": (0.2, "build"),
    "augment.extra.global_blur_p": ([0.5, 0.5], "build"),
    "augment.extra.global_solarize_p": ([0.1, 0.1], "build"),
    "augment.extra.channel_drop_max": (2, "build"),
    "augment.extra.channel_drop_p": (0.9, "build"),
    "data.manifest": ("<other manifest>", "build"),
    "data.split": ("val", "build"),
    "data.normalize": ("minmax", "build"),
    "data.num_workers": (0, "loader"),
    "data.pin_memory": (False, "loader"),
    "run.output_dir": ("<other dir>", "build"),
    "run.seed": (1, "build"),
    "run.device": ("cpu", "device"),
    "run.precision": ("fp32", "build"),
    "run.compile": (True, "build"),
    "run.save_every_steps": (1, "fit"),
    "run.log_every_steps": (1, "fit"),
    "run.tensorboard": (False, "fit"),
}


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "overrides":
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from chada.data import synth

    out = tmp_path_factory.mktemp("paper_cfg")
    m = synth.generate(out / "a", n_per_assay=12, size=32, seed=0, split_fractions=(0.7, 0.3, 0.0))
    m2 = synth.generate(out / "b", n_per_assay=6, size=32, seed=1, split_fractions=(1.0, 0.0, 0.0))
    return {"manifest": m, "other": m2, "root": out}


def _overrides(data: dict[str, Path], key: str | None = None, value: Any = None) -> list[str]:
    """The paper config with size overrides only (tiny data, CPU, batch 8, 1 block), plus one changed key."""
    over = {
        "model.overrides": {"depth": 1},
        "data.manifest": str(data["manifest"]), "run.device": "cpu", "optim.batch_size_per_gpu": 8,
        "run.output_dir": str(data["root"] / "run"), "data.num_workers": 0, "run.progress": False,
    }  # fmt: skip
    if key is not None:
        if isinstance(value, str):
            value = {"<other manifest>": str(data["other"]), "<other dir>": str(data["root"] / "other")}.get(
                value, value
            )
        over[key] = value
    return [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in over.items()
    ]


def fingerprint(t: Trainer) -> dict[str, Any]:
    """What the trainer built, as comparable values."""
    bb, head = t.student.backbone, t.student.head
    n, spe = t.total_steps, t.steps_per_epoch

    def views(v: Any) -> tuple:
        j = v.jitter
        return (
            v.crop.size, tuple(v.crop.scale), v.geom.p_hflip, v.geom.p_vflip, v.geom.p_rot90, v.blur.p,
            None if v.solarize is None else v.solarize.p,
            None if j is None else (j.p, j.brightness, j.contrast),
        )  # fmt: skip

    a = t.augment
    compiled = [getattr(b, "_compiled_call_impl", None) is not None for b in bb.blocks]
    return {
        "backbone": (type(bb).__name__, repr(dataclasses.asdict(bb.config))),
        "init": bb.patch_embed.proj.weight.detach().flatten()[:16].tolist(),
        "head": [tuple(p.shape) for p in head.parameters()] + [head.last_layer.weight_g.requires_grad],
        "loss": (t.loss_fn.student_temp, t.loss_fn.center_momentum, t.loss_fn.n_global, t.loss_fn.out_dim),
        "lr": [t.lr_schedule(i) for i in (0, 1, spe * 5, n // 2, n - 1)] + [t.base_lr],
        "wd": [t.wd_schedule(i) for i in (0, n // 2)],
        "momentum": [t.momentum_schedule(i) for i in (0, n // 2)],
        "temp": [t.teacher_temp(i * spe) for i in (0, 10, 25, 60)],
        "freeze": t.freeze_last_layer_steps,
        "steps": (spe, n),
        "augment": (
            [views(v) for v in a.global_views],
            [views(v) for v in a.local_views],
            None if a.dropout is None else (a.dropout.max_drop, a.dropout.p),
        ),  # fmt: skip
        "data": (
            len(t.dataset),
            t.dataset.dataset.normalizer.method,
            tuple(t.dataset.dataset.frame["image_id"][:3]),
        ),
        "out_dir": str(t.out_dir),
        "device": str(t.device),
        "precision": str(getattr(t._autocast(), "fast_dtype", None)),
        "compiled": compiled,
    }


@pytest.fixture(scope="module")
def base(data: dict[str, Path]) -> dict[str, Any]:
    fp = fingerprint(Trainer(load_config(CONFIG, _overrides(data))))
    assert fingerprint(Trainer(load_config(CONFIG, _overrides(data)))) == fp  # the fingerprint is stable
    return fp


def test_every_key_of_the_paper_config_has_a_check() -> None:
    keys = set(_leaves(yaml.safe_load(CONFIG.read_text())))
    assert keys == set(CASES), f"unchecked: {sorted(keys - set(CASES))}; stale: {sorted(set(CASES) - keys)}"
    for _, how, *_ in CASES.values():
        if "::" in how:  # the named test must exist
            path, name = how.split("::")
            assert f"def {name}(" in (Path(__file__).parent / path).read_text(), how


BUILD = [k for k, (_, how, *_) in CASES.items() if how == "build"]


@pytest.mark.parametrize("key", BUILD)
def test_option_changes_what_the_trainer_builds(
    key: str, data: dict[str, Path], base: dict[str, Any]
) -> None:
    alt, _, *context = CASES[key]
    context = context[0] if context else []
    if context:
        base = fingerprint(Trainer(load_config(CONFIG, _overrides(data) + context)))
    got = fingerprint(Trainer(load_config(CONFIG, _overrides(data, key, alt) + context)))
    assert got != base, f"{key}={alt!r} changed nothing the trainer built"


def test_device_option_is_consumed(data: dict[str, Path]) -> None:
    cfg = load_config(CONFIG)
    assert cfg.run.device == "cuda"  # the paper runs on GPUs
    over = [o for o in _overrides(data) if not o.startswith("run.device")]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="run.device is 'cuda' but no CUDA device"):
            Trainer(load_config(CONFIG, over))
    else:
        assert Trainer(load_config(CONFIG, over)).device.type == "cuda"


def _stub_fit(data: dict[str, Path], extra: list[str]) -> dict[str, Any]:
    """``fit`` for 4 steps with the optimisation step stubbed out; returns what it did."""
    saves: list[int] = []
    t = Trainer(load_config(CONFIG, _overrides(data) + ["run.max_steps=4", "run.export_init=false", *extra]))
    t.train_step = lambda views, want_stats: {  # type: ignore[method-assign]
        "loss": torch.tensor(1.0), "lr": 0.0, "wd": 0.0, "teacher_temp": 0.04, "momentum": 1.0,
    }  # fmt: skip
    t.save_checkpoint = lambda: saves.append(t.global_step)  # type: ignore[method-assign]
    t.fit()
    with open(t.out_dir / "log.csv") as fh:
        logged = [int(r["step"]) for r in csv.DictReader(fh)]
    return {"saves": saves, "log_steps": logged, "tensorboard": (t.out_dir / "tensorboard").exists()}


def test_options_change_what_fit_does(data: dict[str, Path], tmp_path: Path) -> None:
    base = _stub_fit(data, [f"run.output_dir={tmp_path / 'base'}"])
    for i, key in enumerate(k for k, (_, how, *_) in CASES.items() if how == "fit"):
        alt = CASES[key][0]
        got = _stub_fit(data, [f"run.output_dir={tmp_path / str(i)}", f"{key}={str(alt).lower()}"])
        assert got != base, f"{key}={alt!r} changed nothing fit did"


def test_options_change_the_data_loader(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import chada.ssl.train_data as tr

    seen: list[dict[str, Any]] = []
    real = tr.DataLoader

    def loader(*args: Any, **kwargs: Any) -> Any:
        seen.append({k: kwargs.get(k) for k in ("num_workers", "pin_memory")})
        return real(
            *args, **{**kwargs, "num_workers": 0, "pin_memory": False}
        )  # nothing forked or pinned here

    monkeypatch.setattr(tr, "DataLoader", loader)
    paper = load_config(CONFIG).data
    # the paper's own values first, then each alternative
    runs = [["data.num_workers=8", "data.pin_memory=true"]]
    keys = [k for k, (_, how, *_) in CASES.items() if how == "loader"]
    runs += [[o for o in runs[0] if not o.startswith(k)] + [f"{k}={str(CASES[k][0]).lower()}"] for k in keys]
    assert (paper.num_workers, paper.pin_memory) == (8, True)
    for extra in runs:
        t = Trainer(
            load_config(CONFIG, [o for o in _overrides(data) if not o.startswith("data.num_workers")] + extra)
        )
        t.device = torch.device("cuda", 0)  # read only to decide pinning, which happens for CUDA runs
        next(t._loader(0, 0))
    for key, got in zip(keys, seen[1:]):
        assert got != seen[0], f"{key} changed nothing in the DataLoader"
