"""``chada data synth-plate``: the images carry exactly the phenotypes and plate effects the ground truth records.

Every check measures the written TIFFs (cell labels, DAPI nuclear area, Tubulin cytoplasm intensity,
Actin cortex intensity) the way an analysis of a real plate would, and compares with ground_truth.json.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage, stats

from chada.cli import main
from chada.data.plate_synth import BACKGROUND, PlateSpec, generate_plate

NUCLEUS_THRESHOLD = 0.28  # half the nucleus' plateau (0.5) above the background (0.03), plate effects off
FEATURES = ("nuclear_area", "cytoplasm_intensity", "cortex_intensity")


def _cells(out: Path) -> pd.DataFrame:
    """One row per labelled cell: platemap columns, site, centroid, and the three measured features."""
    pm = pd.read_csv(out / "platemap.csv")
    truth = json.loads((out / "ground_truth.json").read_text())
    rows = []
    for r in pm.to_dict("records"):
        for s in range(1, truth["spec"]["n_sites"] + 1):
            stem = out / "images" / r["plate"] / f"{r['well']}_s{s}"
            lab = tifffile.imread(f"{stem}_cp_masks.tif")
            dapi, tub, act = (tifffile.imread(f"{stem}_w{c}.tif") / 65535.0 for c in (1, 2, 3))
            for i, (sy, sx) in enumerate(ndimage.find_objects(lab), start=1):
                m = lab[sy, sx] == i
                nuc = m & (dapi[sy, sx] > NUCLEUS_THRESHOLD)
                ring = m & ~ndimage.binary_erosion(m, iterations=2)
                cy, cx = ndimage.center_of_mass(lab == i)
                rows.append({**r, "site": s, "cell": i, "cy": cy, "cx": cx, "nuclear_area": int(nuc.sum()),
                             "cytoplasm_intensity": tub[sy, sx][m & ~nuc].mean() - BACKGROUND,
                             "cortex_intensity": act[sy, sx][ring].mean() - BACKGROUND,
                             **{f"mean_w{c + 1}": p[sy, sx][m].mean() for c, p in enumerate((dapi, tub, act))}})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> tuple[Path, pd.DataFrame, dict]:
    """One plate without plate effects: 3 MoAs x 1 compound + 1 inactive, 2 doses, 4 DMSO wells, 3 sites."""
    out = tmp_path_factory.mktemp("screen")
    spec = PlateSpec(n_plates=1, n_wells=12, n_sites=3, compounds_per_moa=1, n_inactive=1, plate_effects=False)
    generate_plate(out, spec)
    return out, _cells(out), json.loads((out / "ground_truth.json").read_text())


def test_labels_are_the_drawn_cells(screen):
    out, cells, truth = screen
    for field, n in truth["cells"].items():
        lab = tifffile.imread(out / "images" / f"{field}_cp_masks.tif")
        dapi = tifffile.imread(out / "images" / f"{field}_w1.tif") / 65535.0
        tub = tifffile.imread(out / "images" / f"{field}_w2.tif") / 65535.0 - BACKGROUND
        # The labels are the cells' outlines: ~85 % of the cytoplasm's signal lies inside them (the rest is
        # the 1-2 px soft edge); labels 2 px too small hold ~50 %, 2 px too large ~97 %.
        assert 0.78 < tub[lab > 0].sum() / tub.sum() < 0.9, field
        assert lab.dtype == np.uint16 and lab.shape == (128, 128)
        assert 10 <= n <= 20 and lab.max() == n
        assert set(np.unique(lab)) == set(range(n + 1)), field  # 0 = background, 1..n with no gap
        for i in range(1, n + 1):
            assert ndimage.label(lab == i)[1] == 1  # one connected cell
            assert (dapi[lab == i] > NUCLEUS_THRESHOLD).sum() > 20  # ... holding a nucleus
        assert np.median(dapi[ndimage.binary_dilation(lab > 0, iterations=3) == 0]) < 0.06  # dark outside cells
    assert len(cells) == sum(truth["cells"].values())


def test_phenotypes_follow_the_recorded_effect_and_dose_order(screen):
    _, cells, truth = screen
    dmso = cells[cells["compound"] == "DMSO"]
    for name, t in truth["compounds"].items():
        if not t["active"]:
            continue
        feat = t["feature"]
        measured = {}
        for dose, recorded in t["effect_by_dose"].items():
            treated = cells[(cells["compound"] == name) & (cells["dose"] == float(dose))][feat]
            measured[dose] = treated.mean() / dmso[feat].mean() - 1
            assert abs(measured[dose] - recorded) < 0.08 + 0.15 * abs(recorded), (name, dose, measured, recorded)
        low, high = sorted(t["effect_by_dose"], key=float)
        assert abs(measured[high]) > abs(measured[low]) + 0.1, (name, measured)  # dose order
        high_cells = cells[(cells["compound"] == name) & (cells["dose"] == float(high))][feat]
        assert stats.ttest_ind(high_cells, dmso[feat], equal_var=False).pvalue < 1e-6


def test_inactive_compounds_equal_dmso_within_noise(screen):
    _, cells, truth = screen
    dmso = cells[cells["compound"] == "DMSO"]
    inactive = [c for c, t in truth["compounds"].items() if not t["active"]]
    assert inactive
    for name in inactive:
        treated = cells[cells["compound"] == name]
        for feat in FEATURES:
            assert stats.ttest_ind(treated[feat], dmso[feat], equal_var=False).pvalue > 0.01, (name, feat)
            assert abs(treated[feat].mean() / dmso[feat].mean() - 1) < 0.06, (name, feat)


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> dict[str, tuple[pd.DataFrame, dict]]:
    """The same two-plate screen with and without plate effects (DMSO-heavy: 6 of 8 wells)."""
    out = {}
    for effects in (True, False):
        folder = tmp_path_factory.mktemp(f"effects_{effects}")
        spec = PlateSpec(n_plates=2, n_wells=8, n_sites=2, n_moas=1, compounds_per_moa=1, n_inactive=1,
                         doses=(1.0,), plate_effects=effects, seed=3)  # fmt: skip
        generate_plate(folder, spec)
        out[str(effects)] = (_cells(folder), json.loads((folder / "ground_truth.json").read_text()), folder)
    return out


def test_without_plate_effects_the_plates_are_statistically_equal(plates):
    cells, truth, _ = plates["False"]
    assert all(fx["gain"] == 1.0 and fx["shift"] == 0.0 for fx in truth["plates"].values())
    dmso = cells[cells["compound"] == "DMSO"]
    for col in ("mean_w1", "mean_w2", "mean_w3", *FEATURES):
        a, b = (dmso[dmso["plate"] == p][col] for p in ("P1", "P2"))
        assert stats.ttest_ind(a, b, equal_var=False).pvalue > 0.01, col
        assert abs(a.mean() / b.mean() - 1) < 0.04, col


def test_plate_effects_are_the_recorded_gain_gradient_and_shift(plates):
    on, truth, folder_on = plates["True"]
    off, _, folder_off = plates["False"]
    assert on[["plate", "well", "site", "cell"]].equals(off[["plate", "well", "site", "cell"]])  # same cells
    size = truth["spec"]["size"]
    channels = truth["channels"]
    for plate, fx in truth["plates"].items():
        sel = (on["plate"] == plate).to_numpy()
        a = fx["gradient_angle"]
        proj = ((on["cx"] - size / 2) * np.cos(a) + (on["cy"] - size / 2) * np.sin(a))[sel] / size
        for c, name in enumerate(channels):
            ratio = (on[f"mean_w{c + 1}"] / off[f"mean_w{c + 1}"])[sel]
            if name == fx["shift_channel"]:
                field = f"{plate}/{on['well'][sel].iloc[0]}_s1"
                bg_on, bg_off = (tifffile.imread(f / "images" / f"{field}_w{c + 1}.tif") / 65535.0 for f in (folder_on, folder_off))
                lab = tifffile.imread(folder_on / "images" / f"{field}_cp_masks.tif")
                far = ndimage.binary_dilation(lab > 0, iterations=4) == 0
                assert abs(np.median(bg_on[far]) - fx["gain"] * np.median(bg_off[far]) - fx["shift"]) < 0.006, plate
                continue
            fit = stats.linregress(proj, ratio)  # ratio = gain * (1 + strength * projection)
            assert abs(fit.intercept - fx["gain"]) < 0.03 * fx["gain"], (plate, name, fit)
            assert abs(fit.slope / fit.intercept - fx["gradient_strength"]) < 0.08, (plate, name, fit)
    gains = [fx["gain"] for fx in truth["plates"].values()]
    assert abs(gains[0] - gains[1]) > 0.05  # this seed's plates do differ, so the checks above can fail


def test_platemap_design_and_determinism(tmp_path):
    spec = PlateSpec(n_plates=2, n_wells=20, n_sites=1, size=64, cells=(3, 5), seed=5)
    a, b = generate_plate(tmp_path / "a", spec), generate_plate(tmp_path / "b", spec)
    assert a.read_text() == b.read_text()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tif"))
    assert len(files) == 2 * 20 * (3 + 1)
    for rel in files:
        assert np.array_equal(tifffile.imread(tmp_path / "a" / rel), tifffile.imread(tmp_path / "b" / rel)), rel
    pm = pd.read_csv(tmp_path / "a" / "platemap.csv")
    truth = json.loads(a.read_text())
    for _, plate in pm.groupby("plate"):
        trt = plate[plate["control_type"] == "trt"]
        assert len(trt) == len(truth["compounds"]) * 2 and not trt.duplicated(["compound", "dose"]).any()
        assert (plate["compound"] == "DMSO").sum() >= 2 and (plate.loc[plate["compound"] == "DMSO", "control_type"] == "negcon").all()
    c = generate_plate(tmp_path / "c", PlateSpec(**{**spec.__dict__, "seed": 6}))
    assert json.loads(c.read_text())["cells"] != truth["cells"]


def test_cli_writes_a_plate_that_its_printed_scan_command_reads(tmp_path, capsys):
    out = tmp_path / "plate"
    assert main(["data", "synth-plate", str(out), "--plates", "1", "--wells", "18", "--sites", "1", "--size", "64"]) == 0
    printed = capsys.readouterr().out
    scan = next(line for line in printed.splitlines() if line.startswith("next: chada "))
    assert main(shlex.split(scan)[2:]) == 0
    assert main(["data", "check", str(out / "manifest.csv")]) == 0
    assert "OK (18 images)" in capsys.readouterr().out
    assert main(["data", "synth-plate", str(out)]) == 2  # images/ already there
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "synth-plate", str(tmp_path / "x"), "--wells", "10"]) == 2
    assert "the design needs 16 treatment wells" in capsys.readouterr().err
    assert main(["data", "synth-plate", str(tmp_path / "y"), "--channels", "1", "--moas", "2"]) == 2
    assert "1 channel(s) allow 0..1 MoA classes" in capsys.readouterr().err


def test_mito_and_er_moas_on_five_channels(tmp_path):
    spec = PlateSpec(n_plates=1, n_wells=9, n_sites=2, n_channels=5, n_moas=5, compounds_per_moa=1, n_inactive=0,
                     doses=(10.0,), plate_effects=False, seed=1)  # fmt: skip
    truth = json.loads(generate_plate(tmp_path, spec).read_text())
    pm = pd.read_csv(tmp_path / "platemap.csv")
    rows = []
    for r in pm.to_dict("records"):
        for s in (1, 2):
            stem = tmp_path / "images" / r["plate"] / f"{r['well']}_s{s}"
            lab = tifffile.imread(f"{stem}_cp_masks.tif")
            idx = np.arange(1, lab.max() + 1)
            for c, name in ((4, "Mito"), (5, "ER")):
                img = tifffile.imread(f"{stem}_w{c}.tif") / 65535.0 - BACKGROUND
                rows += [{"compound": r["compound"], "channel": name, "value": v} for v in ndimage.mean(img, lab, idx)]
    cells = pd.DataFrame(rows)
    for name, t in truth["compounds"].items():
        if t["channels"][0] not in ("Mito", "ER"):
            continue
        ch = t["channels"][0]
        sel = cells[cells["channel"] == ch]
        measured = sel[sel["compound"] == name]["value"].mean() / sel[sel["compound"] == "DMSO"]["value"].mean() - 1
        recorded = t["effect_by_dose"]["10"]
        assert abs(measured - recorded) < 0.08 + 0.15 * abs(recorded), (name, ch, measured, recorded)


def test_split_design_puts_the_compounds_of_one_moa_on_different_plates(tmp_path):
    spec = PlateSpec(n_plates=2, n_wells=16, n_sites=1, size=64, cells=(2, 3), n_moas=2, compounds_per_moa=2,
                     n_inactive=2, doses=(1.0, 10.0), replicates=2, design="split")  # fmt: skip
    truth = json.loads(generate_plate(tmp_path, spec).read_text())
    pm = pd.read_csv(tmp_path / "platemap.csv")
    for name, t in truth["compounds"].items():
        rows = pm[pm["compound"] == name]
        assert sorted(rows["plate"].unique()) == t["plates"] and len(t["plates"]) == 1
        assert len(rows) == 2 * 2  # 2 doses x 2 replicate wells, all on its one plate
    for moa in ("nuclear_swelling", "tubulin_gain", ""):
        plates = [t["plates"][0] for t in truth["compounds"].values() if t["moa"] == moa]
        assert sorted(plates) == ["P1", "P2"], moa
    assert (pm.groupby("plate")["control_type"].apply(lambda c: (c == "negcon").sum()) >= 2).all()


def test_confounded_design_gives_each_moa_a_home_plate(tmp_path):
    spec = PlateSpec(n_plates=3, n_wells=12, n_sites=1, size=64, cells=(2, 3), n_moas=3, compounds_per_moa=3,
                     n_inactive=2, doses=(1.0, 10.0), replicates=1, design="confounded")  # fmt: skip
    truth = json.loads(generate_plate(tmp_path, spec).read_text())
    pm = pd.read_csv(tmp_path / "platemap.csv")
    for name, t in truth["compounds"].items():
        assert sorted(pm.loc[pm["compound"] == name, "plate"].unique()) == t["plates"] and len(t["plates"]) == 1
    by_moa = {m: [t["plates"][0] for t in truth["compounds"].values() if t["moa"] == m] for m in truth["moas"]}
    # MoA m: two compounds on its home plate P(m+1), its last on the next plate
    assert by_moa == {"nuclear_swelling": ["P1", "P1", "P2"], "tubulin_gain": ["P2", "P2", "P3"],
                      "actin_loss": ["P3", "P3", "P1"]}  # fmt: skip
    assert (pm.groupby("plate")["control_type"].apply(lambda c: (c == "negcon").sum()) >= 2).all()


@pytest.mark.parametrize(("kw", "words"), [
    ({"n_plates": 1, "compounds_per_moa": 3}, "--plates >= 2"),
    ({"n_plates": 2, "compounds_per_moa": 2}, "--compounds-per-moa >= 3"),
    ({"n_plates": 3, "compounds_per_moa": 3, "n_wells": 9}, "the design needs 8 treatment wells"),
])  # fmt: skip
def test_confounded_design_that_cannot_be_drawn_is_one_line(kw, words):
    from chada.errors import InputError

    with pytest.raises(InputError) as err:
        PlateSpec(design="confounded", **kw).check()
    assert words in str(err.value) and "\n" not in str(err.value)
