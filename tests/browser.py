"""Render an HTML file in headless Chromium, the way a reader opens it, and report what the
page shows: the DOM after its scripts ran, how many images decoded, which references broke.

Chromium is Debian's package `chromium` (not installed by the set-up; `.ci/run` installs it).
Without it the checks skip, except in CI (the `CI` environment variable set, as CI services
do): there a missing browser fails them, so that CI cannot pass with the checks left out.
"""
import html
import json
import os
import re
import shutil
import subprocess

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# No network here: without these Chromium keeps trying to reach Google's hosts.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]
CHECK_ID = "gfocal-browser-check"
# Runs after the page has loaded: every <img> decoded (complete, with a width), and every
# resource the page loads (src=, <link href=>) or links to locally (<a href=> not http).
CHECKER = """<script>
window.addEventListener('load', function () {
  // <img src=""> is a placeholder (pytest-html's media viewer of a test without media)
  var images = Array.prototype.slice.call(document.images)
                    .filter(function (i) { return i.getAttribute('src') !== ''; });
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return (i.alt || '?') + ': ' + i.src.slice(0, 80); });
  var refs = [];
  document.querySelectorAll('[src], link[href], a[href]').forEach(function (e) {
    var url = e.getAttribute('src') || e.getAttribute('href');
    if (e.tagName === 'SCRIPT' && e.id === 'gfocal-checker') return;
    if (url && !/^(data:|#|javascript:|mailto:)/.test(url) &&
        !(e.tagName === 'A' && /^https?:/.test(url))) refs.push(url);
  });
  var out = document.createElement('pre');
  out.id = '%s';
  out.textContent = JSON.stringify({images: images.length, broken: broken, refs: refs});
  document.body.appendChild(out);
});
</script>""" % CHECK_ID


def find_browser():
    """The browser's path on PATH now (looked up per call), or None."""
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_browser():
    """The browser's path; without one a skip, or in CI a failure (one line)."""
    browser = find_browser()
    if browser is None:
        reason = (f"no headless browser ({', '.join(BROWSERS)}) on PATH: "
                  "`apt-get install chromium` enables this check")
        if in_ci():
            pytest.fail(f"CI is set and {reason}", pytrace=False)
        pytest.skip(reason)
    return browser


def render(html_path, profile_dir):
    """(DOM text after load, {'images': n, 'broken': [...], 'missing': [...]})."""
    browser = require_browser()
    folder, name = os.path.split(os.path.abspath(html_path))
    with open(html_path, encoding="utf-8") as f:
        page = f.read()
    # a copy beside the original, so relative references resolve as they do for a reader
    copy = os.path.join(folder, f".browser-check-{name}")
    with open(copy, "w", encoding="utf-8") as f:
        f.write(page.replace("</body>", CHECKER + "</body>") if "</body>" in page
                else page + CHECKER)
    try:
        run = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile_dir}",
                              "--dump-dom", "file://" + copy],
                             capture_output=True, text=True, timeout=120)
    finally:
        os.remove(copy)
    assert run.returncode == 0, run.stderr[-2000:]
    match = re.search(f'<pre id="{CHECK_ID}">(.*?)</pre>', run.stdout, re.S)
    assert match, "the page never finished loading:\n" + run.stderr[-2000:]
    check = json.loads(html.unescape(match.group(1)))
    check["missing"] = [ref for ref in check.pop("refs")
                        if not os.path.exists(os.path.join(folder, ref.split("#")[0]
                                                           .removeprefix("file://")))]
    return run.stdout, check
