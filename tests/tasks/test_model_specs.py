"""The ``models:`` section shared by the reconstruction and dense tasks (chada.tasks.model_specs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chada.tasks.model_specs import TaskModelSpec, parse_task_models


def _parse(raw, handmade=True, base=Path("/cfg")):
    return parse_task_models("dense", "t", raw, base, handmade, "folder or name")


def test_forms_and_resolution(tmp_path: Path) -> None:
    (tmp_path / "teacher").mkdir()
    module = torch.nn.Linear(2, 2)
    got = parse_task_models(
        "dense", "t",
        {"a": "teacher", "b": {"model": "chada_vit_test", "family": "untrained", "seed": 3}, "c": "handmade",
         "d": {"path": "missing_dir", "arch": "chada_vit"}, "e": module},
        tmp_path, True, "x",
    )  # fmt: skip
    assert got["a"] == TaskModelSpec("a", str(tmp_path / "teacher"))
    assert got["b"] == TaskModelSpec("b", "chada_vit_test", "untrained", None, 3)
    assert got["c"].model == "handmade"
    assert got["d"] == TaskModelSpec("d", str(tmp_path / "missing_dir"), None, "chada_vit", 0)
    assert got["e"].model is module
    listed = _parse([{"name": "x", "model": "chada_vit_test"}, {"name": "y", "model": "handmade"}])
    assert list(listed) == ["x", "y"] and listed["x"].model == "chada_vit_test"


def test_a_folder_named_like_a_registered_model_wins(tmp_path: Path) -> None:
    (tmp_path / "chada_vit_test").mkdir()
    assert parse_task_models("dense", "t", {"a": "chada_vit_test"}, tmp_path, True, "x")["a"].model == str(
        tmp_path / "chada_vit_test"
    )


@pytest.mark.parametrize(
    ("raw", "handmade", "message"),
    [
        (None, True, r"^dense\.t\.models: required \(name -> folder or name\)$"),
        ({}, True, "models: required"),
        ("teacher", True, "models: required"),
        ({"a": {"model": "x", "colour": 1}}, True, r"^dense\.t\.models\.a\.colour: unknown key; valid keys: arch, family"),
        ({"a": {"family": "learned"}}, True, r"^dense\.t\.models\.a: 'model' is required$"),
        ({"a": {"model": "x", "family": "trained"}}, True, "family: expected one of 'learned', 'untrained', 'handmade', got 'trained'"),
        ({"a": {"model": "x", "seed": "abc"}}, True, r"^dense\.t\.models\.a\.seed: expected an integer >= 0, got 'abc'$"),
        ({"a": {"model": "x", "seed": -1}}, True, "seed: expected an integer >= 0, got -1"),
        ({"a": {"model": "x", "seed": 1.5}}, True, "seed: expected an integer >= 0, got 1.5"),
        ({"a": 3}, True, "model must be a saved-model folder, a registered model name or an nn.Module, got 3"),
        ({"a": "handmade"}, False, "hand-made features are not an encoder"),
    ],
)  # fmt: skip
def test_refusals_name_the_task_and_model(raw, handmade: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _parse(raw, handmade)
