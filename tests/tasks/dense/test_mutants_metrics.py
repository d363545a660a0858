"""The window around each object in chada.tasks.dense.metrics.object_scores, by hand on small masks.

An object's IoU counts the predicted pixels in a window grown around its box by half its
equivalent-circle diameter (at least 2 px), and nothing outside it: each case below places one false
positive just inside or just outside that window, or an object against the image border.
"""

from __future__ import annotations

import numpy as np
import pytest

from chada.tasks.dense.metrics import object_scores


def _scores(pred: np.ndarray, inst: np.ndarray, ignore: np.ndarray | None = None) -> dict[int, float]:
    ignore = np.zeros(inst.shape, bool) if ignore is None else ignore
    return {r["object"]: r["iou"] for r in object_scores(pred, inst, ignore, np.ones(inst.shape, bool))}


def test_a_big_object_grows_its_window_by_half_its_diameter() -> None:
    inst = np.zeros((24, 24), np.int32)
    inst[10:18, 10:18] = 1  # 64 px: diameter 2 sqrt(64 / pi) = 9.03, grown by round(4.51) = 5 px
    pred = inst > 0
    pred[12, 6] = True  # 4 px left of the box: inside the window -> IoU 64 / 65
    assert _scores(pred, inst) == {1: pytest.approx(64 / 65)}
    pred[12, 6], pred[12, 4] = False, True  # 6 px left: outside
    assert _scores(pred, inst) == {1: 1.0}


def test_the_rows_of_the_window_follow_the_rows_of_the_box() -> None:
    inst = np.zeros((24, 24), np.int32)
    inst[2:4, 10:18] = 1  # 16 px, two rows by eight columns: diameter 4.51, grown by 2 px
    pred = inst > 0
    pred[8, 12] = pred[20, 12] = True  # rows 8 and 20 are below the window (rows 0..5)
    assert _scores(pred, inst) == {1: 1.0}
    pred[5, 12] = True  # the window's last row
    assert _scores(pred, inst) == {1: pytest.approx(16 / 17)}


def test_an_object_in_the_image_corner() -> None:
    inst = np.zeros((10, 10), np.int32)
    inst[0:2, 0:4] = 1  # 8 px in the top-left corner: its first row and column are in the window
    pred = inst > 0
    pred[0:2, 0:2] = False  # half of it predicted
    pred[2, 0] = True  # and one false positive just below
    assert _scores(pred, inst) == {1: pytest.approx(4 / 9)}


def test_a_tall_image_keeps_rows_below_its_width() -> None:
    inst = np.zeros((30, 10), np.int32)
    inst[20:24, 2:6] = 1  # below row 10 = the image's width
    pred = np.zeros_like(inst, dtype=bool)
    pred[20:24, 2:4] = True
    assert _scores(pred, inst) == {1: pytest.approx(0.5)}


def test_ignored_pixels_do_not_stretch_an_objects_box() -> None:
    inst = np.zeros((20, 20), np.int32)
    inst[2:4, 2:4] = 1
    ignore = np.zeros_like(inst, dtype=bool)
    ignore[15:17, 15:17] = True  # an ignored patch far from the object
    pred = inst > 0
    pred[10, 10] = True  # far from the object, between it and the ignored patch
    assert _scores(pred, inst, ignore) == {1: 1.0}
