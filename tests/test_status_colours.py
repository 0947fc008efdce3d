"""Status colours on the live page come from the status's meaning (web/status_colours.js): the lab's
three-digit codes and PASS/OK/FAIL/ERROR, with a legend; anything else neutral.

The pure function runs under node (skipped where node is absent); the page itself in headless
Chromium (skipped where chromium is absent), against a real DSM on free loopback ports.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Optional

import pytest

from dsm_harness import LOOPBACK, PACKAGE, announcement, wait_for
from test_web_integration import (HeadlessChromium, get_json, needs_chromium, send_status,
                                  start_web_dsm)

COLOURS_JS = os.path.join(PACKAGE, "web", "status_colours.js")
NODE = shutil.which("node") or shutil.which("nodejs")
EXPECTED = {
    "000": "stopped", "001": "initialised", "002": "started",
    "010": "dsm-trouble", "013": "dsm-trouble", "019": "dsm-trouble",
    "200": "client-trouble", "203": "client-trouble", "299": "client-trouble",
    "300": "script-failure", "301": "script-failure", "399": "script-failure",
    "PASS": "pass", "pass": "pass", " OK ": "pass", "Passed": "pass",
    "FAIL": "fail", "ERROR": "fail", "error": "fail", "FAILED": "fail",
    # Anything else is neutral: other codes, other words, near misses, empty.
    "003": "other", "020": "other", "100": "other", "400": "other", "0001": "other",
    "01": "other", "2": "other", "PASSING": "other", "OKAY": "other", "idle": "other", "": "other",
}


@pytest.mark.skipif(NODE is None, reason="needs node for the page's JavaScript logic")
def test_status_meaning_in_javascript():
    script = ("const c = require(%s); const out = {};"
              "for (const s of JSON.parse(process.argv[1])) out[s] = c.statusMeaning(s);"
              "out.__legend__ = c.STATUS_MEANINGS.map((m) => m[0]);"
              "console.log(JSON.stringify(out));" % json.dumps(COLOURS_JS))
    done = subprocess.run([NODE, "-e", script, json.dumps(list(EXPECTED))],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    legend = result.pop("__legend__")
    assert result == EXPECTED
    assert set(legend) == set(EXPECTED.values())  # every meaning is in the legend


def test_every_meaning_has_a_colour_in_the_stylesheet():
    with open(os.path.join(PACKAGE, "web", "style.css")) as f:
        css = f.read()
    for meaning in set(EXPECTED.values()):
        assert ".status-%s {" % meaning in css, meaning
    with open(os.path.join(PACKAGE, "web", "index.html")) as f:
        html = f.read()
    assert html.index("/status_colours.js") < html.index("/app.js")


COLOURS = """(() => {
  const ticks = {};
  for (const tick of document.querySelectorAll("#drive-rows .tick")) {
    ticks[tick.textContent] = {meaning: tick.dataset.meaning,
                               colour: getComputedStyle(tick).backgroundColor};
  }
  return {ticks: ticks, legend: [...document.querySelectorAll("#legend .legend-item")]
          .map((item) => item.innerText.trim())};
})()"""


@needs_chromium
def test_the_live_page_colours_statuses_by_meaning_with_a_legend(dsm_factory):
    dsm = start_web_dsm(dsm_factory)
    dsm.announce(announcement("ZC1"))
    statuses = ["001", "002", "013", "203", "301", "PASS", "FAIL", "weird", "000"]
    for number, status in enumerate(statuses):
        send_status(dsm, "ZC1", status, "2026-11-30 10:%02d:00" % number)
    wait_for(lambda: "ZC1" in get_json(dsm, "/api/drives"), what="ZC1 heard")
    browser: Optional[HeadlessChromium] = None
    try:
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, dsm.info["http_port"]))
        page = wait_for(lambda: (lambda p: p if p and len(p["ticks"]) == 9 else None)(
            browser.evaluate(COLOURS)), timeout=20, what="nine status ticks on the page")
    finally:
        if browser is not None:
            browser.close()
    ticks = page["ticks"]
    assert {status: tick["meaning"] for status, tick in ticks.items()} == {
        status: EXPECTED.get(status, "other") for status in statuses}
    colours = {tick["meaning"]: tick["colour"] for tick in ticks.values()}
    assert len(set(colours.values())) == len(colours)  # each meaning its own colour
    assert colours["pass"] != colours["fail"]
    assert len(page["legend"]) == 9 and page["legend"][0] == "PASS, OK"
    assert any("3XX script failure" in item for item in page["legend"])
