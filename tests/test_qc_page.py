"""The QC page of a registration (``qc.html``) and the index of a batch (``index.html``)
(issue 34), checked as HTML and in a real browser: headless Chromium takes screenshots
that must show the panels (not blank), the flicker must change the pixels, and images
the headers put apart must show a note, here and in ``overlay.png``.

The browser tests skip without Chromium, unless ``DDMR_REQUIRE_BROWSER=1`` (CI), which
makes a missing browser a failure."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

import ddmr
from ddmr.io.images import save_image
from ddmr.registration.qc_page import qc_page_html, read_thumbnail, write_qc_page
from ddmr.spatial.grid import Geometry
from register_helpers import oblique_fixed, other_moving, sample_scene

SHIFT = (2.0, -3.0, 1.5)
PLANES = ("axial", "coronal", "sagittal")
WINDOW = (1280, 1900)


# --- the browser ----------------------------------------------------------------------

def _browser() -> str:
    """Chromium's path; skips (fails with DDMR_REQUIRE_BROWSER=1) when there is none."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if os.environ.get("DDMR_REQUIRE_BROWSER") == "1":
        pytest.fail("DDMR_REQUIRE_BROWSER=1 and no Chromium found (apt-get install chromium)")
    pytest.skip("no Chromium (DDMR_REQUIRE_BROWSER=1 makes this a failure)")


def _chromium(url: str, *arguments: str) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; its standard output."""
    browser = _browser()
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
             "--force-device-scale-factor=1", *arguments, url],
            capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


#: Added to a copy of a page: keeps a <pre id="probe"> up to date with the page's state
#: and where its panels are (CSS pixels, the page's top left at 0, 0).
PROBE = """<script>(function () {
  var pre = document.createElement('pre'); pre.id = 'probe'; document.body.appendChild(pre);
  function box(e) { var r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }
  function report() {
    var out = {show: document.body.dataset.show, mode: document.body.dataset.mode,
               tags: [], regions: {}, notes: []};
    document.querySelectorAll('.tag').forEach(function (t) { out.tags.push(t.textContent); });
    document.querySelectorAll('figure[data-plane]').forEach(function (f) {
      out.regions[f.className + ':' + f.dataset.plane] = box(f.querySelector('.stack')); });
    document.querySelectorAll('.note').forEach(function (n) {
      if (getComputedStyle(n).visibility === 'visible') { out.notes.push(box(n)); } });
    document.querySelectorAll('img.thumb').forEach(function (t) {
      out.regions['thumb:' + t.alt] = box(t); });
    var bar = document.querySelector('#jacobian-legend .bar');
    if (bar) { out.regions.legend = box(bar); }
    pre.textContent = JSON.stringify(out);
  }
  report(); setInterval(report, 50);
})();</script>"""


def _probed(page: Path) -> Path:
    """A copy of ``page`` with :data:`PROBE` (the same layout above the probe)."""
    copy = page.with_name(page.stem + "-probe.html")
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    return copy


def _probe(page: Path, fragment: str = "", budget: int = 200) -> dict:
    """The probe's report after ``budget`` ms of the page's (virtual) time."""
    dom = _chromium(page.as_uri() + fragment, f"--virtual-time-budget={budget}",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def _screenshot(page: Path, fragment: str = "", budget: int = 200) -> np.ndarray:
    """A (rows, columns, 3) screenshot of the page's top :data:`WINDOW`."""
    from PIL import Image

    path = page.with_name(f"shot-{uuid.uuid4().hex[:8]}.png")
    _chromium(page.as_uri() + fragment, f"--virtual-time-budget={budget}",
              f"--screenshot={path}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _crop(shot: np.ndarray, box: list[float]) -> np.ndarray:
    left, top, width, height = (round(v) for v in box)
    assert width > 8 and height > 8, box
    assert left + width <= shot.shape[1] and top + height <= shot.shape[0], \
        f"panel {box} beyond the screenshot {shot.shape}"
    return shot[top + 2:top + height - 2, left + 2:left + width - 2]


def _coloured(pixels: np.ndarray) -> np.ndarray:
    return (pixels.max(axis=-1) - pixels.min(axis=-1)) > 90


# --- registrations ---------------------------------------------------------------------

def _scene():
    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    return ((sample_scene(fixed_geometry, sharp=True), fixed_geometry),
            (sample_scene(moving_geometry, SHIFT, sharp=True), moving_geometry),
            (sample_scene(fixed_geometry, labels=True), fixed_geometry),
            (sample_scene(moving_geometry, SHIFT, labels=True), moving_geometry))


@pytest.fixture(scope="module")
def registered():
    """A small registration (engine, both label maps) and the fixed labels."""
    fixed, moving, fixed_seg, moving_seg = _scene()
    result = ddmr.register(fixed, moving, fixed_seg, moving_seg, model=False)
    return result, fixed_seg[0]


@pytest.fixture(scope="module")
def apart():
    """A registration whose moving image the headers place 300 mm to the left."""
    fixed, (moving, moving_geometry), _, _ = _scene()
    affine = moving_geometry.affine.copy()
    affine[0, 3] += 300.0  # the same image, its header 300 mm off
    return ddmr.register(fixed, (moving, Geometry(affine, moving_geometry.shape)),
                         model=False, engine=False)


# --- the page as HTML --------------------------------------------------------------------

def test_the_page_holds_the_verdict_metrics_planes_and_no_external_reference(registered,
                                                                           tmp_path):
    result, fixed_labels = registered
    page = write_qc_page(tmp_path / "qc.html", result, fixed_labels=fixed_labels).read_text()
    measures, metrics = result.qc.measures, result.summary["metrics"]
    # every check: a row with its value, its limit and its outcome
    for check in result.qc.checks:
        row = re.search(rf'<tr class="(pass|fail)" data-check="{check.name}">(.*?)</tr>', page)
        assert row, check.name
        assert row.group(1) == ("pass" if check.passed else "fail")
        assert (">PASS<" if check.passed else ">FAIL<") in row.group(2)
    assert f"NCC {measures['ncc_before']:.3f} \u2192 {measures['ncc_after']:.3f}" in page
    assert f"{measures['folding_percent']:.3f} %" in page and "\u2264 1 %" in page
    assert f"{measures['inverse_error_voxels']:.3f} voxel" in page
    assert f"after \u2265 {0.5:g}" in page  # the foreground overlap's limit
    assert "QC passed" in page and 'content="pass"' in page
    # the main metrics
    for key, digits in (("dsc", 3), ("hd95", 2), ("tre", 2), ("folding_percent", 3)):
        card = re.search(rf'data-metric="{key}">.*?<div class="v">([^<]*)<', page)
        assert card and card.group(1).startswith(f"{metrics[key]:.{digits}f}"), key
    assert f"{result.summary['runtime_s']['total']:.2f} s" in page
    # three planes of flicker (fixed under every stage), contours and det J
    for plane in PLANES:
        for kind in ("viewer", "contour", "jacobian"):
            assert f'<figure class="{kind}" data-plane="{plane}">' in page
    assert page.count('class="layer fixed"') == 3
    for stage in ("warped", "affine", "headers"):
        assert page.count(f'data-stage="{stage}"') == 3
    assert "white lines: the fixed labels" in page and "DSC 0." in page
    assert 'id="jacobian-legend"' in page and "det J \u2264 0: folding" in page
    # self-contained: every reference is a data: URI or an anchor
    references = re.findall(r'(?:src|href|content)\s*=\s*"([^"]*)"', page)
    assert references and all(r.startswith(("data:", "#")) or "/" not in r
                              for r in references)
    assert not re.search(r"https?:|url\(|@import|<link|<iframe", page)
    assert read_thumbnail(tmp_path / "qc.html").startswith("data:image/jpeg;base64,")


def test_a_page_without_labels_says_how_to_get_them(registered):
    result, _ = registered
    bare = dataclasses.replace(result, warped_seg=None)
    page = qc_page_html(bare)
    assert "No label map" in page and "--moving-labels" in page
    assert '<figure class="contour"' not in page


# --- the page in a browser ------------------------------------------------------------

def test_the_page_in_a_browser_shows_every_panel_and_flickers(registered, tmp_path):
    result, fixed_labels = registered
    _browser()
    jacobian = result.jacobian.copy()
    centre = tuple(slice(n // 3, n - n // 3) for n in jacobian.shape)
    jacobian[centre] = -0.2  # a folded block through the three planes: marked green
    folded = dataclasses.replace(result, jacobian=jacobian)
    page = _probed(write_qc_page(tmp_path / "qc.html", folded, fixed_labels=fixed_labels))
    state = _probe(page, "#show=fixed")
    assert state["show"] == "fixed" and set(state["tags"]) == {"fixed"}
    fixed_shot = _screenshot(page, "#show=fixed")
    moving_shot = _screenshot(page, "#show=moving")
    assert fixed_shot.std() > 20
    regions = state["regions"]
    for plane in PLANES:
        before = _crop(fixed_shot, regions[f"viewer:{plane}"])
        after = _crop(moving_shot, regions[f"viewer:{plane}"])
        assert before.std() > 15 and after.std() > 15, plane
        assert np.abs(before - after).mean() > 2, f"{plane}: the flicker changes nothing"
        contours = _crop(fixed_shot, regions[f"contour:{plane}"])
        assert contours.std() > 15 and _coloured(contours).sum() > 20, plane
        assert np.array_equal(contours, _crop(moving_shot, regions[f"contour:{plane}"]))
        det = _crop(fixed_shot, regions[f"jacobian:{plane}"])
        green = (det[..., 1] > 150) & (det[..., 0] < 80) & (det[..., 2] < 80)
        assert green.sum() > 50, f"{plane}: folding not marked"
        assert (_coloured(det) & ~green).sum() > 50, f"{plane}: no det J colours"
    bar = _crop(fixed_shot, regions["legend"])
    left, right = bar[:, :5].mean(axis=(0, 1)), bar[:, -5:].mean(axis=(0, 1))
    assert left[2] > left[0] + 60 and right[0] > right[2] + 60  # blue to red


def test_the_flicker_runs_by_itself(registered, tmp_path):
    result, _ = registered
    _browser()
    page = _probed(write_qc_page(tmp_path / "qc.html", result))
    assert _probe(page, budget=100)["show"] == "fixed"
    later = _probe(page, budget=1000)  # one period (700 ms) later
    assert later["show"] == "moving" and set(later["tags"]) == {"warped (registered)"}


def test_images_the_headers_put_apart_get_a_note_not_a_black_panel(apart, tmp_path):
    from PIL import Image

    from ddmr.overlay import NOTE_GREY

    page_path = write_qc_page(tmp_path / "qc.html", apart)
    page = page_path.read_text()
    assert 'id="headers-apart"' in page and "The headers put the images apart" in page
    assert page.count('class="layer moving note" data-stage="headers"') == 3
    assert page.count('data-stage="affine" src="data:image/png') == 3  # the affine part shows
    # overlay.png: the "moving (headers)" panels hold the note, not black
    apart.save(tmp_path / "out")
    image = np.asarray(Image.open(tmp_path / "out" / "overlay.png").convert("RGB"))
    note = (image == NOTE_GREY).all(axis=-1)
    words = (image[..., 0] > 90) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert note.sum() > 3 * 20_000 and words.sum() > 300
    _browser()
    probed = _probed(page_path)
    state = _probe(probed, "#mode=headers&show=moving")
    assert len(state["notes"]) == 3 and set(state["tags"]) == {"moving, as the headers place it"}
    shot = _screenshot(probed, "#mode=headers&show=moving")
    for box in state["notes"]:
        note = _crop(shot, box)[26:]  # below the label "moving, as the headers ..."
        assert note.mean() > 180, "the note panel is dark"
        assert (note.max(axis=-1) < 150).sum() > 100, "the note panel has no words"


# --- the batch index -------------------------------------------------------------------

def _write_pairs(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def batch_files(tmp_path, monkeypatch):
    """Images for a batch (a good pair, a moving image of noise, a broken file), and each
    pair's qc.html written with its outputs (whether or not RegistrationResult.write
    writes it itself)."""
    from ddmr.registration.result import RegistrationResult

    (fixed, fixed_geometry), (moving, moving_geometry), _, _ = _scene()
    save_image(tmp_path / "fixed.nii.gz", fixed, fixed_geometry)
    save_image(tmp_path / "moving.nii.gz", moving, moving_geometry)
    noise = np.random.default_rng(1).uniform(0, 100, moving_geometry.shape)
    save_image(tmp_path / "noise.nii.gz", noise.astype(np.float32), moving_geometry)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    original = RegistrationResult.write

    def write(self, folder, *arguments, **options):
        original(self, folder, *arguments, **options)
        if not (Path(folder) / "qc.html").exists():
            write_qc_page(Path(folder) / "qc.html", self)

    monkeypatch.setattr(RegistrationResult, "write", write)
    return tmp_path


def _ids(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<tr class="[a-z]+" data-id="([^"]+)" data-state="([a-z]+)">', page)


def test_the_batch_index_lists_the_worst_first_with_thumbnails(batch_files):
    from ddmr.registration.batch import register_pairs

    pairs = _write_pairs(batch_files / "pairs.csv", [
        {"fixed": "fixed.nii.gz", "moving": "moving.nii.gz", "id": "good"},
        {"fixed": "fixed.nii.gz", "moving": "noise.nii.gz", "id": "noise"},
        {"fixed": "fixed.nii.gz", "moving": "broken.nii.gz", "id": "broken"}])
    out = batch_files / "batch"
    register_pairs(pairs, out, model=False, affine=False, engine=False, progress=False)
    page = (out / "index.html").read_text()
    assert _ids(page) == [("broken", "error"), ("noise", "fail"), ("good", "pass")]
    assert "1 raised an error, 1 failed QC, 1 passed QC" in page
    for ident in ("noise", "good"):
        assert f'href="{ident}/qc.html"' in page and (out / ident / "qc.html").is_file()
    assert page.count('<img class="thumb"') == 2 and "data:image/jpeg;base64," in page
    assert "structure" in page  # the noise's failed checks
    assert not re.search(r"https?:|url\(|@import|<link", page)
    _browser()
    probed = _probed(out / "index.html")
    regions = _probe(probed)["regions"]
    shot = _screenshot(probed)
    assert shot.std() > 20
    for ident in ("noise", "good"):  # the thumbnails show images, not one flat colour
        assert _crop(shot, regions[f"thumb:{ident}"]).std() > 15, ident


def test_shards_write_the_index_and_merge_rewrites_it(batch_files):
    from ddmr.registration.batch import merge, register_pairs

    pairs = _write_pairs(batch_files / "pairs.csv", [
        {"fixed": "fixed.nii.gz", "moving": "moving.nii.gz", "id": "good"},
        {"fixed": "fixed.nii.gz", "moving": "noise.nii.gz", "id": "noise"}])
    out = batch_files / "batch"
    register_pairs(pairs, out, model=False, affine=False, engine=False, progress=False,
                   shard=(1, 2))
    assert _ids((out / "index.html").read_text()) == [("good", "pass"), ("noise", "pending")]
    register_pairs(pairs, out, model=False, affine=False, engine=False, progress=False,
                   shard=(2, 2))
    (out / "index.html").unlink()
    merge(out)
    assert _ids((out / "index.html").read_text()) == [("noise", "fail"), ("good", "pass")]


def test_within_a_class_the_more_severe_comes_first(tmp_path):
    from ddmr.registration.batch_index import BatchIndex

    def done(ident: str, failed: list[str], overlap: float) -> None:
        (tmp_path / ident).mkdir()
        summary = {"qc": {"passed": not failed, "failed": failed,
                          "measures": {"foreground_overlap_after": overlap, "ncc_after": 0.9}},
                   "metrics": {"dsc": 0.8}, "runtime_s": {"total": 1.0}}
        (tmp_path / ident / "summary.json").write_text(json.dumps(summary))

    done("a", [], 0.95)
    done("b", ["folding"], 0.9)
    done("c", ["folding", "similarity"], 0.95)
    done("d", [], 0.7)
    errors = [{"id": "e", "qc": "error", "qc_failed": "e.nii.gz: no such file"}]
    order = [(e.id, e.state) for e in BatchIndex(tmp_path, list("abcdef")).entries(errors)]
    assert order == [("e", "error"), ("c", "fail"), ("b", "fail"), ("d", "pass"),
                     ("a", "pass"), ("f", "pending")]
