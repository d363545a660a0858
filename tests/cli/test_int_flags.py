"""Integer flags below their smallest sensible value are refused while parsing, in one line that names
the flag (not a setting's inner name, not an internal error after minutes of pretraining)."""

from __future__ import annotations

import argparse

import pytest

from chada.cli import build_parser, main
from chada.config_reader import at_least
from chada.data.synth import generate

# (sub-command words and required positionals, flag, smallest accepted value)
FLAGS = [
    (["embed"], "--batch-size", 1),
    (["embed"], "--workers", 0),
    (["embed"], "--chunk-batches", 1),
    (["embed"], "--crop-size", 1),
    (["embed"], "--min-area", 0),
    (["embed"], "--max-area", 1),
    (["features"], "--image-size", 1),
    (["subsets"], "--max-subsets", 1),
    (["subsets"], "--seeds", 1),
    (["attention"], "--channel-ids", 0),
    (["quickstart"], "--epochs", 1),
    (["quickstart"], "--n-per-assay", 2),
    (["quickstart"], "--seeds", 1),
    (["quickstart"], "--pretrain-seeds", 1),
    (["quickstart"], "--threads", 1),
    (["quickstart"], "--jobs", 1),
    (["evaluate"], "--seeds", 1),
    (["evaluate"], "--torch-threads", 1),
    (["profile"], "--null-size", 1),
    (["profile"], "--n-boot", 1),
    (["project"], "--n-neighbors", 2),
    (["convert"], "--num-heads", 1),
    (["data", "synth", "out"], "--n-per-assay", 1),
    (["data", "synth", "out"], "--size", 1),
    (["data", "check", "m.csv"], "--c-max", 1),
    (["data", "check", "m.csv"], "--patch-size", 0),
    (["data", "shard", "m.csv", "out"], "--shard-size", 1),
    (["data", "shard", "m.csv", "out"], "--size", 1),
    (["data", "synth-plate", "out"], "--plates", 1),
    (["data", "synth-plate", "out"], "--sites", 1),
    (["data", "synth-plate", "out"], "--moas", 0),
    (["data", "synth-plate", "out"], "--compounds-per-moa", 1),
    (["data", "synth-plate", "out"], "--inactive", 0),
    (["data", "synth-plate", "out"], "--replicates", 1),
    (["data", "import", "bray", "src", "out"], "--limit", 1),
    (["data", "build-corpus"], "--per-source", 1),
    (["data", "build-corpus"], "--size", 1),
    (["data", "build-corpus"], "--shard-size", 1),
]


@pytest.mark.parametrize(("words", "flag", "lo"), FLAGS, ids=[" ".join(w[:2]) + " " + f for w, f, _ in FLAGS])
def test_a_value_below_the_bound_or_not_an_integer_is_refused_naming_the_flag(words, flag, lo, capsys):
    for bad in (str(lo - 1), "2.5", "x"):
        with pytest.raises(SystemExit) as exc:
            main([*words, flag, bad])
        assert exc.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last == f"chada {' '.join(words[:2] if words[0] == 'data' else words[:1])}: error: argument {flag}: expected an integer >= {lo}, got {bad!r}"  # fmt: skip


@pytest.mark.parametrize(("words", "flag", "lo"), FLAGS, ids=[" ".join(w[:2]) + " " + f for w, f, _ in FLAGS])
def test_the_bound_itself_is_accepted(words, flag, lo, monkeypatch):
    # the parser alone: parsing stops at the first missing required option, after the flag's type ran
    parser = build_parser()
    seen: list[int] = []

    def error(self: argparse.ArgumentParser, message: str) -> None:
        raise AssertionError(message) if flag in message else SystemExit(2)

    monkeypatch.setattr(argparse.ArgumentParser, "error", error)
    try:
        args = parser.parse_args([*words, flag, str(lo)])
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        seen.append(value[0] if isinstance(value, list) else value)
    except SystemExit:  # a required option is missing: the flag itself was accepted
        seen.append(lo)
    assert seen == [lo]


def test_at_least_returns_the_integer():
    assert at_least(1)("7") == 7 and at_least(0)("0") == 0 and at_least(-3)("-3") == -3
    assert at_least(1)("1e3") == 1000 and at_least(1)("4.0") == 4  # as config_reader.integer reads them
    assert at_least(2).__name__ == "integer >= 2"
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected an integer >= 2, got '1'$"):
        at_least(2)("1")


@pytest.mark.parametrize(("kw", "message"), [({"n_per_assay": 0}, "n_per_assay: expected an integer >= 1, got 0"),
                                             ({"size": 0}, "size: expected an integer >= 1, got 0"),
                                             ({"size": 2.5}, "size: expected an integer >= 1, got 2.5"),
                                             ({"n_per_assay": True}, "n_per_assay: expected an integer >= 1, got True")])  # fmt: skip
def test_the_synthetic_generator_refuses_empty_assays_and_images(tmp_path, kw, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        generate(tmp_path / "s", **kw)
    assert not (tmp_path / "s").exists()  # refused before writing anything
