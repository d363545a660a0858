"""Issue 29 item 5 on images: synth-plate -> data scan -> embed --objects (hand-made) -> profile,
checked against the plate's ground_truth.json.

The plate (``--design split``, 4 compounds per MoA on 2 plates, 3 replicate wells, doses 1 and 10 uM,
2 inactive compounds) is drawn twice with the same seed, plate effects on and off, so the two
differ only by the plate effects. Hand-made features are computed on the raw intensities
(``--normalize none``): the default per-crop percentile scaling would erase both the plate gain and
the intensity phenotypes (tubulin gain, actin loss).

"Without correction" means normalising against the DMSO wells of the whole screen: one "plate"
(``--plate-col dataset``) of wells (``--well-col image_id``: one site per well), which scales the
features but leaves the plate effects in; "with correction" is the default per-plate
``mad_robustize`` against each plate's DMSO wells. NSCB is scored by plate.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.plates import GLOBAL, plate_cells, profile_readouts

pytestmark = pytest.mark.slow  # ~40 s on 2 shared cores: two plates drawn, embedded, profiled 4 times

PLATE = [
    "--design",
    "split",
    "--compounds-per-moa",
    "4",
    "--replicates",
    "3",
    "--wells",
    "48",
    "--sites",
    "1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("plate_profiles")
    out: dict[str, object] = {}
    for fx in ("on", "off"):
        d = root / fx
        cells = plate_cells(d, PLATE, effects=fx == "on")
        out[f"truth_{fx}"] = json.loads((d / "ground_truth.json").read_text())
        out[f"{fx}_plate"] = profile_readouts(cells, root / f"prof_{fx}_plate", [])
        out[f"{fx}_global"] = profile_readouts(cells, root / f"prof_{fx}_global", GLOBAL)
    return out


def test_active_compounds_retrieved_inactive_not(runs: dict) -> None:
    truth = runs["truth_on"]["compounds"]
    top = max(runs["truth_on"]["spec"]["doses"])
    for key in ("on_plate", "off_plate"):
        per = runs[key][1]
        got = per.set_index(["compound", "dose"])["activity_q"]
        active_top = {c: got[(c, top)] for c, t in truth.items() if t["active"]}
        inactive = [q for (c, _), q in got.items() if not truth[c]["active"]]
        # 12 active compounds at 10 uM: the 8 intensity phenotypes (tubulin gain, actin loss; a
        # 20-45 % change) all retrieved. Nuclear swelling (+30-45 % nuclear area) is seen weakly by
        # the hand-made features of 32 px crops: at seed 0, 3 of 4 (plate effects on) and 2 of 4
        # (off) are retrieved, so at least 2 are asked for. The 4 inactive treatments: none.
        intensity = [q for c, q in active_top.items() if truth[c]["moa"] != "nuclear_swelling"]
        nuclear = [q for c, q in active_top.items() if truth[c]["moa"] == "nuclear_swelling"]
        assert len(intensity) == 8 and max(intensity) < 0.05, (key, active_top)
        assert len(nuclear) == 4 and sum(q < 0.05 for q in nuclear) >= 2, (key, active_top)
        assert len(inactive) == 4 and min(inactive) >= 0.05, (key, inactive)


def test_plate_effects_lower_nscb_and_correction_raises_it(runs: dict) -> None:
    on_global, on_plate, off_global = runs["on_global"][0], runs["on_plate"][0], runs["off_global"][0]
    # uncorrected plate effects cost MoA consistency and NSCB against the same plate without them
    # (seed 0: consistency AP 0.705 vs 0.987, NSCB 0.833 vs 1.000) ...
    assert on_global["consistency_ap"] < off_global["consistency_ap"] - 0.2, (on_global, off_global)
    assert on_global["nscb"] < off_global["nscb"], (on_global, off_global)
    # ... and per-plate normalisation against DMSO wins them back (0.930, 0.958; 0.897 before features flat on a plate's DMSO wells were dropped)
    assert on_plate["consistency_ap"] > on_global["consistency_ap"] + 0.15, (on_plate, on_global)
    assert on_plate["nscb"] > on_global["nscb"], (on_plate, on_global)


def test_no_plate_effects_correction_changes_nothing(runs: dict) -> None:
    off_global, off_plate, on_plate = runs["off_global"][0], runs["off_plate"][0], runs["on_plate"][0]
    for r in ("nsc", "nscb"):  # 24 treatments: one query is 0.042
        assert abs(off_plate[r] - off_global[r]) <= 0.1, (r, off_plate, off_global)
        assert abs(on_plate[r] - off_plate[r]) <= 0.1, (r, on_plate, off_plate)
    for r in ("activity_map", "consistency_ap"):
        assert abs(off_plate[r] - off_global[r]) <= 0.1, (r, off_plate, off_global)
