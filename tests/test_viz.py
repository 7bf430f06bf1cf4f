"""Grids, strips, captions and borders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rcdm import viz


def _img(v: int, size=(8, 8)) -> np.ndarray:
    return np.full((*size, 3), v, np.uint8)


def test_grid_layout_condition_first_then_samples():
    rows = [[_img(10), _img(20), _img(30)], [_img(40), _img(50), _img(60)]]
    g = viz.grid(rows, pad=2, separator_after_first=True)
    gap0 = 3 * 2 + 2
    assert g.shape == (2 + 2 * (8 + 2), 2 + 3 * 8 + 2 * 2 + (gap0 - 2) + 2, 3)

    # cell (r, c) top-left corners
    def at(r, c):
        x = 2 + c * 10 + (gap0 - 2 if c >= 1 else 0)
        return g[2 + r * 10 : 2 + r * 10 + 8, x : x + 8]

    for r in range(2):
        for c in range(3):
            assert (at(r, c) == rows[r][c]).all()
    # the wider separator column between the condition and the first sample is white
    assert (g[:, 2 + 8 : 2 + 8 + gap0] == 255).all()


def test_grid_resizes_condition_and_short_rows():
    rows = [[_img(0, (32, 32)), _img(100), _img(100)], [_img(7)]]
    g = viz.grid(rows, pad=1, separator_after_first=False)
    assert g.shape == (1 + 2 * 9, 1 + 3 * 9, 3)
    assert (g[1:9, 1:9] == 0).all()  # 32 px condition resized to the 8 px sample cell
    assert (g[10:18, 10:] == 255).all()  # missing cells stay white
    with pytest.raises(ValueError, match="uint8"):
        viz.grid([[np.zeros((8, 8, 3), np.float32)]])


def test_strip_with_ends():
    path = [_img(v) for v in (10, 20, 30, 40)]
    s = viz.strip(path, pad=2, ends=(_img(1), _img(2)))
    body = viz.strip(path, pad=2)
    assert body.shape == (12, 2 + 4 * 10, 3)
    assert s.shape[0] == 12 and s.shape[1] == body.shape[1] + 2 * (12 + 6)
    assert (s[2:10, 2:10] == 1).all() and (s[2:10, -10:-2] == 2).all()


def test_annotate_red_border_save_png(tmp_path):
    img = _img(128, (32, 48))
    a = viz.annotate(img, "dims 12 zeroed")
    assert a.shape[1] == 48 and a.shape[0] > 32
    assert (a[:32] == 128).all()
    assert (a[32:] < 255).any()  # some text was drawn
    above = viz.annotate(img, "x", position="above")
    assert (above[-32:] == 128).all()
    b = viz.red_border(img, width=2)
    assert b.shape == img.shape and (b[0, 0] == [255, 0, 0]).all() and (b[16, 24] == 128).all()
    assert (img[0, 0] == 128).all()
    p = viz.save_png(a, tmp_path / "sub" / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(p)), a)
    ph = viz.placeholder((16, 16), "class 3")
    assert ph.shape == (16, 16, 3)


def test_labels_break_at_spaces_never_inside_a_word():
    f = viz.font()
    # the labels the issue saw cut: each laid out in a 60 px tile
    for text in (
        "color-jitter",
        "samples demo/run",
        "d(h) 2.01e+03",
        "(1 - 0.143) h(a) + 0.143 h(b)",
        "RandomRotation(20)",
        "eps 0.05\ncls_1\n+12 pts",
    ):
        lines, size = viz.layout(text, 60, 3)
        assert viz.label_problems(text, lines, 60, viz.font(size)) == [], (text, lines)
    assert viz.wrap("color-jitter", 40, f) == ["color-", "jitter"]  # at the hyphen, not "color-jitt / er"
    assert viz.wrap("2.01e+03", 10, f) == ["2.01e+03"]  # a number is never broken (it overflows instead)
    # the checker is not vacuous: the old character-count wrapping fails it
    assert "cut inside" in viz.label_problems("color-jitter", ["color-jitt", "er"], 100, f)[0]
    assert "cut inside" in viz.label_problems("d(h)=2.01e+03", ["d(h)=2.01e", "+03"], 100, f)[0]
    assert "px wide" in viz.label_problems("a-very-long-label", ["a-very-long-label"], 20, f)[0]
    assert viz.label_problems("two words", ["two"], 100, f)  # text lost


def test_label_layout_is_recorded_and_tiles_line_up():
    with viz.recording() as log:
        a = viz.annotate(_img(128, (32, 64)), "mask least (degenerate)", lines=3)
        b = viz.annotate(_img(128, (32, 64)), "", lines=3)
    assert a.shape == b.shape  # same band height: tiles labelled alike line up
    assert [x.text for x in log] == ["mask least (degenerate)", ""] and log[0].width == 64 - 2 * viz.MARGIN
    g = viz.grid([[a, _img(0, (40, 64))]])  # a shorter tile of the cell's width is padded, not stretched
    assert (g[2 + 40 : 2 + a.shape[0], -2 - 64 : -2] == 255).all()


def test_enlarge_by_whole_factor():
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = viz.enlarge(img, 3)
    assert big.shape == (6, 6, 3) and (big[:3, :3] == img[0, 0]).all() and (big[3:, 3:] == img[1, 1]).all()
