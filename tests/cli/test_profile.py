"""``chada profile`` end to end on synthetic feature tables, and its one-line errors."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from chada.cli import main
from chada.profiles.synth import synthetic_cells
from tests.helpers import REPO

FAST = ["--null-size", "200", "--n-boot", "100", "--projection", "pca", "--batch-col", "batch",
        "--exclude-moa", "inactive"]  # fmt: skip


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on, _, _ = synthetic_cells(plate_effects=True)
        off, _, _ = synthetic_cells(plate_effects=False)
    on.to_parquet(d / "on.parquet", index=False)
    off.to_csv(d / "off.csv", index=False)
    return d, on


def test_two_models_readouts_comparisons_figures(tables, tmp_path, capsys):
    d, _ = tables
    out = tmp_path / "prof"
    rc = main(["profile", str(d / "on.parquet"), str(d / "off.csv"), "--names", "on", "off", "--out", str(out),
               "--normalize", "none", *FAST])  # fmt: skip
    assert rc == 0
    got = json.loads((out / "readouts.json").read_text())
    on, off = got["readouts"]["on"], got["readouts"]["off"]
    assert on["nscb"]["value"] < on["nsc"]["value"] and off["nscb"]["value"] == 1.0
    comp = pd.read_csv(out / "comparisons.csv").set_index("readout")
    assert comp.loc["nscb", "diff"] == pytest.approx(on["nscb"]["value"] - off["nscb"]["value"])
    assert comp.loc["nscb", "ci_high"] < 0  # effects off is better on NSCB, paired over 24 treatments
    wells = pd.read_parquet(out / "on" / "wells.parquet")
    assert len(wells) == 4 * 36 and wells["n_cells"].eq(12).all()
    tr = pd.read_parquet(out / "on" / "treatments.parquet")
    assert len(tr) == 1 + 14 * 2 - 1 and set(tr["batches"]) == {
        "B1",
        "B2",
    }  # treated only: 14 compounds x 2 doses
    for f in ("map_scatter.png", "map_scatter.svg", "treatment_map.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    md = (out / "profiles.md").read_text()
    assert "| on | " in md and "Paired differences" in md and "figures/treatment_map.png" in md
    assert "nscb" in capsys.readouterr().out


def _one_well_left(t: pd.DataFrame, compound: str, dose: float) -> pd.DataFrame:
    sel = (t.compound == compound) & (t.dose == dose)
    first = t.loc[sel, ["plate", "well"]].iloc[0]
    return t[~sel | ((t.plate == first.plate) & (t.well == first.well))]


@pytest.mark.parametrize(
    "change, args, message",
    [
        (lambda t: t, ["--batch-col", "day"], "'day' (batch 1) not in the feature table"),
        (lambda t: t[~((t.plate == "P2") & (t.compound == "DMSO"))], [], "plate 'P2': no negative-control well"),
        (lambda t: _one_well_left(t, "cpd_m0_0", 1.0), [], "one replicate well, no mAP possible: cpd_m0_0/1.0"),
        (lambda t: t, ["--control-query", "compound == 'PBS'"], "no negative-control well"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tables, tmp_path, capsys, change, args, message):
    d, on = tables
    path = tmp_path / "t.parquet"
    change(on).to_parquet(path, index=False)
    rc = main(["profile", str(path), "--out", str(tmp_path / "o"), *FAST, *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "Traceback" not in err, err


def test_evaluate_config_profiles_section(tables, tmp_path):
    """``chada evaluate`` runs a ``profiles:`` section alone: chada profile's folder + a results.md section."""
    import yaml

    d, _ = tables
    cfg = {"out_dir": str(tmp_path / "ev"), "profiles": {
        "tables": {"on": str(d / "on.parquet"), "off": str(d / "off.csv")}, "normalize": "none",
        "batch_cols": ["batch"], "exclude_moa": ["inactive"], "projection": "none", "null_size": 200, "n_boot": 100}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", "--config", str(tmp_path / "c.yaml")]) == 0
    got = json.loads((tmp_path / "ev" / "profiles" / "readouts.json").read_text())
    assert got["readouts"]["on"]["nscb"]["value"] < got["readouts"]["on"]["nsc"]["value"]
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "## Profiles" in md and "](profiles/figures/map_scatter.png)" in md
    cfg["profiles"]["batch_col"] = "batch"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", "--config", str(tmp_path / "c.yaml")]) == 2


def test_bbbc021_config_profiles_section_fits_the_importers_columns(tmp_path):
    """The BBBC021 config's profiles section on a table with the BBBC021 importer's columns (per-image rows)."""

    from chada.profiles.run import profile_table
    from chada.tasks.evaluation import normalize_config

    config = REPO / "configs" / "eval" / "bbbc021.yaml"
    settings, models, _ = normalize_config(config)
    task = settings["profiles"]
    assert set(task.tables) == set(models)  # default: the models' embedding files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cells, names, _ = synthetic_cells(plate_effects=True, cells_per_well=3)
    cells = cells.rename(columns={"dose": "concentration"}).drop(columns="object_id")
    cells["moa"] = cells["moa"].replace({"control": "DMSO", "inactive": None})
    cfg = task.config
    cfg.null_size, cfg.n_boot = 100, 50
    res = profile_table(cells, names, cfg)
    assert res.readouts["nsc"]["n"] == 24 and res.readouts["activity_map"]["n"] == 28


def test_npz_feature_file_with_list_metadata(tables, tmp_path):
    """A ``chada embed`` .npz (features 'cls', list-valued channel names in its meta) profiles as is."""
    from chada.encode.store import EmbeddingSet

    _, on = tables
    names = [c for c in on.columns if c.startswith("f")]
    meta = on.drop(columns=names).assign(channel_names=[["DNA", "Actin"]] * len(on))
    EmbeddingSet({"cls": on[names].to_numpy()}, meta).save(tmp_path / "e.npz")
    out = tmp_path / "o"
    assert main(["profile", str(tmp_path / "e.npz"), "--out", str(out), "--normalize", "none", *FAST]) == 0
    wells = pd.read_parquet(out / "e" / "wells.parquet")
    assert (wells["channel_names"] == "DNA;Actin").all() and "cls_0000" in wells.columns


def test_no_moa_column_scores_activity_only(tables, tmp_path):
    d, on = tables
    on.drop(columns="moa").to_parquet(tmp_path / "nomoa.parquet", index=False)
    out = tmp_path / "o"
    rc = main(["profile", str(tmp_path / "nomoa.parquet"), str(d / "on.parquet"), "--names", "a", "b", "--out", str(out),
               "--moa-col", "none", *FAST])  # fmt: skip
    assert rc == 0
    got = json.loads((out / "readouts.json").read_text())["readouts"]["a"]
    assert got["nsc"]["n"] == 0 and got["activity_map"]["n"] == 28 and got["retrieved"]["value"] > 0.5
    assert set(pd.read_csv(out / "comparisons.csv").readout) == {"activity_map", "retrieved"}
