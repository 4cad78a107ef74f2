"""`hw2rt demo --quick`: every stage runs, the report shows every figure, and a real browser shows
the report without horizontal scrolling at 1280 px with every image loaded."""
import html
import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from hw2rt.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.title = "PROBE" + JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
    images: images.length, broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    widest: Math.max(...images.map(i => i.getBoundingClientRect().right))});
});
</script>"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from hw2rt.runtime import calibration

    out = tmp_path_factory.mktemp("demo") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        # where auto picks int8 for the digits, they calibrate on a short run of their loop here (80 s less;
        # the recipe is in the graph's cache key, and int8's own tests check the full one)
        mp.setitem(calibration.RECIPES, "digit_unet",
                   {**calibration.RECIPES["digit_unet"], "steps": 4, "per_digit": 1, "every": 2})
        r = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--threads", "1"])
    assert r.exit_code == 0, r.output
    return out


def test_demo_quick_writes_report_with_every_figure(demo):
    report = (demo / "report.html").read_text()
    for title in ("eta grid", "interpolation", "digits (rows 0-9)", "reverse process", "Parity", "Accuracy",
                  "generated digits (grader)", "DANN on usps-like test", "DANN on svhn-like test", "Speed"):
        assert title in report
    # ten faces, eta grid, interp, digit grid, frames, the speed chart
    assert report.count("data:image/png;base64,") == 10 + 4 + 1
    summary = json.loads((demo / "report.json").read_text())
    assert all(p["passed"] for p in summary["parity"])
    # every network runs what the scripts open here (engines/auto.py), parity checks that engine, and the
    # report says which and why
    from hw2rt.engines.auto import choose
    for p in summary["parity"]:
        chosen = choose(p["model"], "auto", "cpu")
        assert (p["candidate"]["backend"], p["candidate"]["precision"]) == (chosen.backend, chosen.precision)
        assert html.escape(chosen.line()) in report
    digits = choose("digit_unet", "auto", "cpu")
    assert f"w=2, {digits.backend} {digits.precision}" in report
    assert set(summary["accuracy"]) == {"generated digits (grader)", "DANN on usps-like test",
                                        "DANN on svhn-like test"}
    assert len(list((demo / "digits").glob("*.png"))) == 20
    speed = summary["speed"]  # torch eager against ORT on each network, same run
    assert {(r["network"].split(" ")[0], r["runner"]) for r in speed} >= {
        (n, b) for n in ("face_unet", "digit_unet", "dann_usps", "digit_classifier")
        for b in ("torch", "ort")}
    assert all(r["median_ms"] > 0 and r["x_torch"] > 0 for r in speed)
    assert all(r["x_torch"] == 1.0 for r in speed if r["runner"] == "torch")
    # Every figure at one scale: 3 screen pixels per image pixel (faces 32 px -> 96 px tiles).
    sizes = re.findall(r'width="(\d+)" height="(\d+)" style="image-rendering:pixelated" alt="(\d\d)\.png"',
                       report)
    assert len(sizes) == 10 and all((w, h) == ("96", "96") for w, h, _ in sizes)


@pytest.mark.skipif(CHROMIUM is None,
                    reason="needs Debian's chromium (.ci/run installs it) for the browser check")
def test_the_report_fits_1280_px_in_a_real_browser(demo, tmp_path):
    probe = tmp_path / "report.html"
    probe.write_text((demo / "report.html").read_text().replace("</title>", "</title>" + PROBE, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1280,1000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r"<title>PROBE(.*?)</title>", r.stdout)
    assert found, r.stdout[-2000:] + r.stderr[-2000:]
    page = json.loads(found.group(1).replace("&quot;", '"'))
    assert page["images"] == 15 and page["broken"] == 0, page
    assert page["scrollWidth"] <= page["clientWidth"] <= 1280, page  # no horizontal scroll at 1280 px
    assert page["widest"] <= 1280, page
