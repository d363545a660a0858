"""One config reader (chada.config_reader) behind the four configs: one unknown-key and type-error format.

Each reader is fed the same two mistakes, a misspelt key and a value of the wrong type, from a YAML
file, and must answer in the one format: ``FILE: dotted.key: unknown key (did you mean ...?)`` and
``FILE: dotted.key: expected ..., got VALUE``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chada import config_reader as cr


def _eval_config(tmp_path: Path, extra: dict) -> Path:
    cfg = {"models": {"a": "a.npz"}, "tasks": [{"name": "t", "label_column": "label"}], **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dense_config(tmp_path: Path, entry: dict) -> Path:
    path = tmp_path / "config.yaml"
    base = {"name": "nuclei", "source": "dsb2018", "models": {"h": "handmade"}}
    path.write_text(yaml.safe_dump({"dense": [{**base, **entry}]}))
    return path


def _recon_config(tmp_path: Path, entry: dict) -> Path:
    path = tmp_path / "config.yaml"
    base = {"name": "actin", "manifest": "m.csv", "models": {"a": "chada_vit_test"}}
    path.write_text(yaml.safe_dump({"reconstruction": [{**base, **entry}]}))
    return path


def _ssl(tmp_path: Path, text: str) -> None:
    from chada.ssl.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(text)
    load_config(path)


def _evaluate(path: Path) -> None:
    from chada.tasks.evaluation import normalize_config

    normalize_config(path)


CASES = [
    # reader, how to write the config, the error it must give (after "FILE: ")
    ("ssl", lambda p: _ssl(p, "optim:\n  lrr: 1\n"), r"optim\.lrr: unknown key \(did you mean 'lr'\?\); valid keys: "),
    ("ssl", lambda p: _ssl(p, "optim:\n  lr: abc\n"), r"optim\.lr: expected a number, got 'abc'$"),
    ("ssl", lambda p: _ssl(p, "optim:\n  lr: -1\n"), r"optim\.lr: expected a number > 0, got -1\.0$"),
    ("eval", lambda p: _evaluate(_eval_config(p, {"seedz": 3})), r"seedz: unknown key \(did you mean 'seeds'\?\)"),
    ("eval", lambda p: _evaluate(_eval_config(p, {"knn": {"k": "many"}})), r"knn\.k: expected an integer >= 1, got 'many'$"),
    ("eval", lambda p: _evaluate(_eval_config(p, {"knn": {"temprature": 1}})), r"knn\.temprature: unknown key \(did you mean 'temperature'\?\)"),
    ("dense", lambda p: _evaluate(_dense_config(p, {"tiles": 32})), r"dense\.nuclei\.tiles: unknown key \(did you mean 'tile'\?\)"),
    ("dense", lambda p: _evaluate(_dense_config(p, {"lr": "fast"})), r"dense\.nuclei\.lr: expected a number > 0, got 'fast'$"),
    ("reconstruction", lambda p: _evaluate(_recon_config(p, {"epoch": 3})), r"reconstruction\.actin\.epoch: unknown key \(did you mean 'epochs'\?\)"),
    ("reconstruction", lambda p: _evaluate(_recon_config(p, {"batch_size": 0})), r"reconstruction\.actin\.batch_size: expected an integer >= 1, got 0$"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reader", "write", "message"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_every_reader_names_the_file_and_the_dotted_key(
    reader: str, write, message: str, tmp_path: Path
) -> None:
    with pytest.raises((ValueError, TypeError), match=rf"^{tmp_path / 'config.yaml'}: {message}"):
        write(tmp_path)


def test_the_command_line_prints_it_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from chada.cli import main

    assert main(["evaluate", "--config", str(_eval_config(tmp_path, {"knn": {"k": "many"}}))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("config.yaml: knn.k: expected an integer >= 1, got 'many'") and "Traceback" not in err


@pytest.mark.parametrize(
    ("value", "low", "ok"),
    [(3, None, 3), (3.0, None, 3), ("3", None, 3), ("1e3", None, 1000), (0, 0, 0),
     (True, None, None), (None, None, None), (1.5, None, None), ("x", None, None), (0, 1, None)],
)  # fmt: skip
def test_integer(value, low, ok) -> None:
    if ok is None:
        with pytest.raises(ValueError, match=r"^a\.b: expected an integer"):
            cr.integer(value, "a.b", low)
    else:
        assert cr.integer(value, "a.b", low) == ok and type(cr.integer(value, "a.b", low)) is int


def test_number_bounds_and_choice_hint() -> None:
    assert cr.number("1e-3", "lr") == 0.001 and cr.number(0, "x", 0) == 0.0
    with pytest.raises(ValueError, match=r"^lr: expected a number > 0, got 0$"):
        cr.number(0, "lr", 0, strict_low=True)
    with pytest.raises(ValueError, match=r"^lr: expected a number, got True$"):
        cr.number(True, "lr")
    with pytest.raises(
        ValueError,
        match=r"^run\.device: expected one of 'cpu', 'cuda', got 'cdua' \(did you mean 'cuda'\?\)$",
    ):
        cr.choice("cdua", "run.device", ("cpu", "cuda"))


def test_check_keys_reports_the_first_unknown_in_file_order() -> None:
    with pytest.raises(ValueError, match=r"^sec\.zz: unknown key; valid keys: a, b$"):
        cr.check_keys({"a": 1, "zz": 2, "yy": 3}, ("a", "b"), "sec")
    cr.check_keys({"a": 1}, ("a", "b"), "sec")


@pytest.mark.parametrize("strict_low", [True, False])
def test_nan_is_refused_where_a_range_is_asked(strict_low):
    """NaN passes every comparison (nan < 0 and nan >= 0 are both False): a bound must refuse it by name."""
    from chada.config_reader import number

    with pytest.raises(ValueError, match=r"optim.lr: expected a number"):
        number("nan", "optim.lr", 0, strict_low=strict_low)
    assert number(0, "optim.lr", 0) == 0.0
