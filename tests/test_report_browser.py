"""report.html in a real headless browser (Debian's chromium driven by playwright): the page
loads, every image decodes (naturalWidth > 0), the console shows no error, and no label is cut:
no text overflows its box, nothing sticks out of the window, and every figure is shown at a
whole multiple of its drawn size (never squeezed, so the labels drawn in it stay legible)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from rcdm.analysis.report import Entry, Figure, Table, write_report
from rcdm.viz import annotate, grid, red_border, save_png

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return f"chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


# Text boxes whose content would be cut (clipped or spilling out of their box), images shown at
# another than a whole factor of their size, anything beyond the window's right edge.
CUT_LABELS = """() => {
  const bad = [], W = document.documentElement.clientWidth;
  for (const el of document.querySelectorAll('h1, h2, h3, p, li, th, td, figcaption, .ftitle, summary')) {
    if (el.scrollWidth > el.clientWidth + 1) bad.push('text overflows its box: ' + el.textContent.slice(0, 80));
    if (el.getBoundingClientRect().right > W + 1) bad.push('text beyond the window: ' + el.textContent.slice(0, 80));
  }
  for (const img of document.images) {
    const r = img.getBoundingClientRect(), k = img.clientWidth / img.naturalWidth;  // border excluded
    if (k < 0.999 || Math.abs(k - Math.round(k)) > 0.001) bad.push(`figure ${img.alt} shown at ${k.toFixed(3)}x`);
    if (r.right > W + 1) bad.push(`figure ${img.alt} beyond the window`);
  }
  if (document.documentElement.scrollWidth > W + 1) bad.push('the page is wider than the window');
  return bad;
}"""


def check_in_browser(report: Path, width: int = 1280) -> dict:
    """Open ``report`` from disk in a ``width``-px window; return the number of images and fail
    on any problem (a broken image, a console error, a cut label)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
            page.goto(report.resolve().as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=20000)
            widths = page.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth])")
            title = page.title()
            n_sections = page.evaluate("document.querySelectorAll('section').length")
            cut = page.evaluate(CUT_LABELS)
        finally:
            browser.close()
    broken = [alt for alt, w in widths if w <= 0]
    assert not broken, f"broken images in {report}: {broken}"
    assert not errors, "\n".join(errors)
    assert not cut, f"cut labels in {report}: {cut}"
    return {"images": len(widths), "title": title, "sections": n_sections}


@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_report_loads_in_browser(tmp_path):
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(6)]
    fig1 = grid([[annotate(tiles[0], "original"), *tiles[1:3]], [red_border(tiles[3]), *tiles[4:]]])
    save_png(fig1, tmp_path / "exp" / "a.png")
    save_png(tiles[0], tmp_path / "exp" / "b.png")
    (tmp_path / "exp" / "exp.json").write_text('{"value": 1}\n')
    entries = [
        Entry(
            "exp",
            "Experiment <1>",
            "two checkpoints side by side",
            [
                Figure("exp/a.png", "encoder x, layer trunk, seeds [0, 1]", "run-a"),
                Figure("exp/b.png", "encoder y, layer head, seeds [0, 1]", "run-b"),
            ],
            [Table("numbers", ["name", "value"], [["a", 1.0], ["b", 2.5]])],
            "exp/exp.json",
        ),
        Entry("skip", "Skipped one", skipped="nothing configured"),
    ]
    report = write_report(tmp_path, entries, {"seed": 0})
    shutil.rmtree(tmp_path / "exp")  # self-contained: the page must not need the PNG files
    info = check_in_browser(report)
    assert info["images"] == 2 and info["sections"] == 2
    assert info["title"] == "rcdm analysis"


@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_browser_check_catches_a_broken_image(tmp_path):
    """The check is not vacuous: a page with an undecodable image fails it."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img alt="bad" src="data:image/png;base64,AAAA"></body></html>'
    )
    with pytest.raises(AssertionError, match="broken images"):
        check_in_browser(page)


@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_browser_check_catches_a_cut_label(tmp_path):
    """Not vacuous either: a squeezed figure and a clipped label fail it."""
    png = tmp_path / "a.png"
    save_png(np.zeros((40, 600, 3), np.uint8), png)
    import base64

    data = base64.b64encode(png.read_bytes()).decode()
    page = tmp_path / "cut.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        f'<img alt="squeezed" style="width: 450px" src="data:image/png;base64,{data}">'
        '<p style="width: 5em; overflow: hidden; white-space: nowrap">a label far too long for its box</p>'
        "</body></html>"
    )
    with pytest.raises(AssertionError, match=r"cut labels.*text overflows its box: a label.*squeezed shown at 0.750x"):
        check_in_browser(page)
