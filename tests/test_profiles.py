"""Profiles: aggregation, per-plate normalisation, correction and the readouts on tables with known
answers (``chada.profiles.synth``), mAP against copairs and a hand computation, NSC/NSCB by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from chada.errors import InputError
from chada.eval.paired import paired_bootstrap
from chada.profiles.aggregate import aggregate_rows
from chada.profiles.compare import compare_models
from chada.profiles.config import ProfileConfig
from chada.profiles.normalize import correct_batches, drop_bad_features
from chada.profiles.readouts import activity_map, consistency_map, nn_moa_accuracy
from chada.profiles.run import profile_table, well_profiles
from chada.profiles.synth import synthetic_cells


def _cfg(**kw) -> ProfileConfig:
    base = dict(batch_cols=["batch"], exclude_moa=["inactive"], null_size=300, n_boot=100)
    return ProfileConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tables():
    warnings.simplefilter("ignore")
    on = synthetic_cells(plate_effects=True, seed=0)
    off = synthetic_cells(plate_effects=False, seed=0)
    return on, off


@pytest.fixture(scope="module")
def runs(tables):
    (on, names, _), (off, _, _) = tables
    out = {}
    for key, cells in (("on", on), ("off", off)):
        for norm, corr in (("none", "none"), ("standardize", "none"), ("spherize", "none"), ("none", "harmony")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[key, norm, corr] = profile_table(cells, names, _cfg(normalize=norm, correction=corr))
    return out


# ------------------------------------------------------------------------------------ aggregation
def test_wells_are_medians_of_their_cells_with_counts():
    cells, names, _ = synthetic_cells(plate_effects=True, seed=3, cells_per_well=5)
    cells = cells.drop(index=[0, 1]).reset_index(drop=True)  # first well: 3 cells left
    wells = aggregate_rows(cells, names, ["plate", "well"], "median", count_col="n_cells")
    first = cells[(cells.plate == "P1") & (cells.well == "W001")]
    row = wells[(wells.plate == "P1") & (wells.well == "W001")].iloc[0]
    assert row["n_cells"] == 3 and len(first) == 3
    np.testing.assert_allclose(row[names].to_numpy(float), np.median(first[names].to_numpy(), axis=0))
    assert row["compound"] == "DMSO" and "object_id" not in wells.columns  # varies within a well: not carried
    mean = aggregate_rows(cells, names, ["plate", "well"], "mean")
    np.testing.assert_allclose(mean.loc[0, names].to_numpy(float), first[names].to_numpy().mean(axis=0))
    tr = aggregate_rows(wells, names, ["compound", "dose"], "median", count_col="n_wells", weight_col="n_cells")
    dmso = tr[tr.compound == "DMSO"].iloc[0]
    assert dmso["n_wells"] == 8 * 4 and dmso["n_cells_total"] == (wells.compound == "DMSO").pipe(
        lambda m: wells.loc[m, "n_cells"].sum())


# ---------------------------------------------------------------------------------- normalisation
def test_standardize_centres_each_plates_controls(tables):
    (cells, names, _), _ = tables
    cfg = _cfg(normalize="standardize")
    wells, kept = well_profiles(cells, names, cfg)
    for _, plate in wells.groupby("plate"):
        ctrl = plate[plate.compound == "DMSO"][kept].to_numpy()
        np.testing.assert_allclose(ctrl.mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(ctrl.std(axis=0), 1, atol=1e-6)


def test_plate_effects_off_changes_nothing_after_normalisation(tables):
    """The synthetic plate effects are per-plate affine: normalising on the controls undoes them."""
    (on, names, _), (off, _, _) = tables
    for method in ("standardize", "mad_robustize"):
        a, _ = well_profiles(on, names, _cfg(normalize=method))
        b, _ = well_profiles(off, names, _cfg(normalize=method))
        np.testing.assert_allclose(a[names].to_numpy(float), b[names].to_numpy(float), atol=1e-8)


def test_no_control_on_a_plate_names_the_plate(tables):
    (cells, names, _), _ = tables
    bad = cells[~((cells.plate == "P3") & (cells.compound == "DMSO"))]
    with pytest.raises(InputError, match="plate 'P3': no negative-control well"):
        well_profiles(bad, names, _cfg(normalize="standardize"))


def test_constant_and_nan_features_are_dropped_with_their_names():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "flat": [5.0, 5.0, 5.0], "hole": [1.0, np.nan, 2.0]})
    with pytest.warns(UserWarning, match=r"dropped 2 feature\(s\) constant or NaN: flat, hole"):
        out, kept = drop_bad_features(df, ["a", "flat", "hole"], "after x")
    assert kept == ["a"] and list(out.columns) == ["a"]


def test_feature_flat_on_a_plates_controls_is_dropped_not_blown_up(tables):
    """A feature 0 in every control well of one plate (MAD 0) but not elsewhere: pycytominer would
    divide it by 1e-18; it is dropped with its name, and the other features are normalised as before."""
    (cells, names, _), _ = tables
    cells = cells.copy()
    ctrl_p1 = (cells.plate == "P1") & (cells.compound == "DMSO")
    cells["sparse"] = np.where(ctrl_p1, 0.0, np.random.default_rng(0).exponential(size=len(cells)))
    for method in ("mad_robustize", "standardize"):
        with pytest.warns(UserWarning, match=rf"{method}: dropped 1 feature\(s\) without spread among a plate's negative controls \(scale 0\): sparse"):
            wells, kept = well_profiles(cells, [*names, "sparse"], _cfg(normalize=method))
        ref, ref_names = well_profiles(cells, names, _cfg(normalize=method))
        assert kept == ref_names and np.abs(wells[kept].to_numpy()).max() < 1e3
        np.testing.assert_allclose(wells[kept].to_numpy(), ref[kept].to_numpy())


def test_no_feature_varies_on_the_controls_is_one_line_error(tables):
    (cells, names, _), _ = tables
    first = cells[cells.compound == "DMSO"].groupby("plate").well.min()  # one control well per plate
    one_control = cells[(cells.compound != "DMSO") | (cells.well == cells.plate.map(first))]
    with pytest.raises(InputError, match="mad_robustize: no feature varies among the negative controls"):
        well_profiles(one_control, names, _cfg(normalize="mad_robustize"))


def test_missing_batch_column_is_one_line_error(tables):
    (cells, names, _), _ = tables
    with pytest.raises(InputError, match=r"'day' \(batch 1\)"):
        well_profiles(cells, names, _cfg(batch_cols=["day"], correction="harmony"))
    with pytest.raises(InputError, match=r"batch column\(s\) \['day'\]"):
        correct_batches(cells, names, ["day"])


def test_harmony_moves_batches_together(tables):
    (cells, names, _), _ = tables
    wells, _ = well_profiles(cells, names, _cfg(normalize="none"))
    fixed = correct_batches(wells, names, ["batch"])
    gap = lambda w: np.linalg.norm(w[w.batch == "B1"][names].mean() - w[w.batch == "B2"][names].mean())  # noqa: E731
    assert gap(fixed) < 0.3 * gap(wells)


# ---------------------------------------------------------------------------- known answers
def test_active_treatments_retrieved_and_inactive_not(runs, tables):
    (_, _, truth), _ = tables
    per = runs["on", "standardize", "none"].per_treatment.set_index(["compound", "dose"])
    assert per.loc[truth["active"], "retrieved"].all()
    assert not per.loc[truth["inactive"], "retrieved"].any()


def test_nscb_below_nsc_with_plate_effects_and_correction_raises_it(runs):
    raw = runs["on", "none", "none"].readouts
    assert raw["nscb"]["value"] < raw["nsc"]["value"] - 0.2
    for fix in (("on", "none", "harmony"), ("on", "spherize", "none"), ("on", "standardize", "none")):
        assert runs[fix].readouts["nscb"]["value"] > raw["nscb"]["value"] + 0.2, fix


def test_plate_effects_off_nothing_to_correct(runs):
    for key in (("off", "none", "none"), ("off", "none", "harmony"), ("off", "standardize", "none")):
        r = runs[key].readouts
        assert r["nsc"]["value"] == r["nscb"]["value"] == 1.0, key
    for method in ("standardize", "spherize"):  # per-plate affine effects: readouts identical on / off
        a, b = runs["on", method, "none"].readouts, runs["off", method, "none"].readouts
        for readout in a:
            assert a[readout] == pytest.approx(b[readout]), (method, readout)


# ---------------------------------------------------------------------------------------- mAP
def _six_wells() -> tuple[pd.DataFrame, list[str]]:
    """A: 3 replicates at 0, 10, 50 degrees; DMSO at 30, 120, 180 degrees (2-D unit vectors)."""
    deg = np.radians([0, 10, 50, 30, 120, 180])
    df = pd.DataFrame({"compound": ["A"] * 3 + ["DMSO"] * 3, "dose": 1.0, "f0": np.cos(deg), "f1": np.sin(deg)})
    return df, ["f0", "f1"]


def test_activity_ap_equals_a_hand_computation():
    """Ranks by cosine: A1 -> A2, D1, A3 (AP 5/6); A2 -> A1, D1, A3 (5/6); A3 -> D1, A2, A1 (7/12)."""
    df, names = _six_wells()
    ap, m = activity_map(df, names, ["compound", "dose"], (df.compound == "DMSO").to_numpy(), null_size=100)
    np.testing.assert_allclose(ap["average_precision"].to_numpy(), [5 / 6, 5 / 6, 7 / 12])
    assert m["mean_average_precision"].iloc[0] == pytest.approx(0.75)


def test_activity_and_consistency_equal_copairs_called_directly(runs):
    from copairs.map import average_precision, mean_average_precision
    from copairs.matching import assign_reference_index

    res = runs["on", "standardize", "none"]
    wells = res.wells.reset_index(drop=True)
    wells["tr"] = wells.compound + "@" + wells.dose.astype(str)
    ref = assign_reference_index(wells, "compound == 'DMSO'", reference_col="ref")
    ap = average_precision(ref[["tr", "ref"]], wells[res.names].to_numpy(), ["tr", "ref"], [], [], ["tr", "ref"],
                           progress_bar=False)  # fmt: skip
    ap = ap[ap.ref == -1]
    m = mean_average_precision(ap, ["tr"], null_size=300, threshold=0.05, seed=0, progress_bar=False)
    ours = res.activity.assign(tr=res.activity.compound + "@" + res.activity.dose.astype(str)).set_index("tr")
    theirs = m.set_index("tr").loc[ours.index]
    np.testing.assert_allclose(ours.mean_average_precision, theirs.mean_average_precision, atol=1e-12)
    np.testing.assert_allclose(ours.corrected_p_value, theirs.corrected_p_value, atol=1e-12)
    tr = res.treatments[res.treatments.moa != "inactive"].reset_index(drop=True)
    ap_c = average_precision(tr[["moa", "compound"]], tr[res.names].to_numpy(), ["moa"], ["compound"], [], ["moa"],
                             progress_bar=False)  # fmt: skip
    mine, _ = consistency_map(tr, res.names, "compound", "moa", null_size=100)
    np.testing.assert_allclose(mine.average_precision, ap_c.average_precision, atol=1e-12)


def test_one_replicate_treatment_is_named():
    df, names = _six_wells()
    df = pd.concat([df, pd.DataFrame({"compound": ["B"], "dose": [2.0], "f0": [0.5], "f1": [0.5]})], ignore_index=True)
    with pytest.raises(InputError, match="one replicate well.*B/2.0"):
        activity_map(df, names, ["compound", "dose"], (df.compound == "DMSO").to_numpy())


# ----------------------------------------------------------------------------------- NSC / NSCB
def test_nsc_nscb_equal_a_hand_computation():
    """6 treatments on a circle, angle in degrees (compound, MoA, batch): a1 0 (a, X, 1), a2 5 (a, X, 1),
    b 40 (b, X, 1), c 8 (c, Y, 2), d 68 (d, Y, 2), e 45 (e, X, 1).
    NSC, nearest other compound: a1 -> c (8 deg, miss; a2 at 5 is the same compound); a2 -> c (3, miss);
    b -> e (5, hit); c -> a2 (3, miss); d -> e (23, miss); e -> b (5, hit)  => 2/6.
    NSCB, also another batch: a1 -> c; a2 -> c; b -> d (28, miss); c -> a2; d -> e; e -> d (23, miss)
    => 0/6."""
    deg = np.radians([0, 5, 40, 8, 68, 45])
    X = np.c_[np.cos(deg), np.sin(deg)]
    moa = ["X", "X", "X", "Y", "Y", "X"]
    cpd = ["a", "a", "b", "c", "d", "e"]
    batches = [frozenset({"1"})] * 3 + [frozenset({"2"})] * 2 + [frozenset({"1"})]
    hit, nn = nn_moa_accuracy(X, moa, cpd)
    assert nn.tolist() == [3, 3, 5, 1, 5, 2] and hit.tolist() == [False, False, True, False, False, True]
    hit_b, nn_b = nn_moa_accuracy(X, moa, cpd, batches)
    assert nn_b.tolist() == [3, 3, 4, 1, 5, 4] and not hit_b.any()
    only_b1 = [frozenset({"1"})] * 6  # no other batch anywhere: no neighbour allowed
    assert (nn_moa_accuracy(X, moa, cpd, only_b1)[1] == -1).all()


# ----------------------------------------------------------------------------------- comparisons
def test_paired_bootstrap_and_model_comparison():
    a, b = np.array([1.0, 1, 1, 0, 1, 1]), np.array([0.0, 1, 0, 0, 0, 1])
    d, lo, hi = paired_bootstrap(a, b, n_boot=500, seed=1)
    assert d == pytest.approx(0.5) and 0 < lo < d < hi <= 1
    keys = ["compound", "dose"]
    va = np.array([0.9, 0.2, 0.5, 0.7, 0.1, 0.4])
    A = pd.DataFrame({"compound": list("uvwxyz"), "dose": 1.0, "nsc": va})
    B = pd.DataFrame({"compound": list("zyxwvu"), "dose": 1.0, "nsc": (va - 0.1)[::-1]})  # same items, other order
    B.loc[0, "nsc"] = np.nan  # z unscored by B: left out of the pairs
    out = compare_models({"learned": A, "untrained": B}, keys, ["nsc"], n_boot=200)
    row = out.iloc[0]
    assert (row.model_a, row.model_b, row.n) == ("learned", "untrained", 5)
    # every pair differs by exactly 0.1: a zero-width interval only when items are paired by key
    assert row["diff"] == pytest.approx(0.1) and row.ci_low == pytest.approx(0.1) and row.ci_high == pytest.approx(0.1)


def test_feature_select_drops_redundant_and_flat_features():
    from chada.profiles.normalize import select_features

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(size=40)
    df = pd.DataFrame({"plate": "P1", "a": a, "a_copy": 2 * a + 1e-3 * rng.normal(size=40), "b": b,
                       "flat": np.r_[np.ones(39), 1.0 + 1e-9]})  # fmt: skip
    out, kept = select_features(df, ["a", "a_copy", "b", "flat"], ["variance_threshold", "correlation_threshold"])
    assert kept in (["a", "b"], ["a_copy", "b"]) and "plate" in out.columns
    assert select_features(df, ["a", "b"], [])[1] == ["a", "b"]


def test_config_names_unknown_keys():
    with pytest.raises(InputError, match="profiles.batch_col: unknown key .did you mean 'batch_cols'"):
        ProfileConfig.from_dict({"batch_col": "plate"})
    with pytest.raises(InputError, match="profiles.null_size: expected an integer.*got 'many'"):
        ProfileConfig.from_dict({"null_size": "many"})
    cfg = ProfileConfig.from_dict({"batch_cols": "day", "null_size": "500", "harmony_sigma": 1})
    assert cfg.batch_cols == ["day"] and cfg.null_size == 500 and cfg.harmony_sigma == 1.0
    with pytest.raises(InputError, match="profiles.normalize: expected one of .*got .zscore."):
        ProfileConfig(normalize="zscore")
