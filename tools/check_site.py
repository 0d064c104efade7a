"""Open every built page of the book in headless Chromium and check what a reader would see.

    python tools/check_site.py _build/book/_build/html --notebooks _build/book/notebooks \
        --screenshot .ci-artifacts/first_page.png

For each page of the table of contents:

* the page exists, Chromium renders it, and the rendered DOM shows no Python traceback or error;
* a notebook page holds at least as many images as its executed notebook produced figures, and
  a Colab launch button;
* **no horizontal overflow**: no code block, cell output, table or display equation is wider than
  the content column (``scrollWidth > clientWidth`` measured in the browser at 1280 px);
* **math is rendered**: MathJax is loaded from the site itself (no CDN: the book reads offline),
  every math element was typeset, and no raw ``$$``, ``\\(`` or ``\\[`` is left in the page text;
* **every figure is captioned**: each image of the page content sits in a ``<figure>`` with a
  caption;
* **no word is broken inside a table cell**: every word of every cell is measured with a DOM
  ``Range``; a word whose boxes lie on two lines fails, unless the break follows a hyphen, a slash
  or a comma (a wide table scrolls inside its own box instead);
* **no plumbing**: no visible ``NBVAL`` test marker, and no ``(cached`` run-log line anywhere in
  the page (hidden outputs included);
* **figure text stays readable**: the book's figures set their text at 10 pt or more
  (9 pt for a few labels), at most as wide as the column
  (``avgk_book.plotting.COLUMN_WIDTH_IN``, tested in ``tests/test_book_plotting.py``); the
  browser checks that no figure is shown below 90% of its size, which would shrink that text
  under 9 pt.

The measurements run in the page: a copy of it with a small script is opened, the script waits
for MathJax and writes its findings into the DOM, which ``--dump-dom`` returns. Exits non-zero on
any failure. Without Chromium it exits 0 with a notice, unless ``--require`` (CI) is given.
"""

from __future__ import annotations

import argparse
import html as html_lib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WINDOW = "--window-size=1280,1600"
ERROR_MARKERS = [
    "Traceback (most recent call last)",
    "output traceback",
    "output error",
    "Error in cell",
    "Exception: ",
]
PROBE_ID = "avgk-site-probe"
# Runs in the page once MathJax has typeset it (or at once without MathJax); writes a JSON report.
PROBE = r"""
<script>
(function () {
  function text(el) { return (el.textContent || "").replace(/\s+/g, " ").trim().slice(0, 90); }
  function lineTop(node, start, end) {
    var range = document.createRange();
    range.setStart(node, start);
    range.setEnd(node, end);
    var rects = Array.prototype.filter.call(range.getClientRects(), function (r) { return r.width > 0; });
    return rects.length ? Math.round(rects[0].top) : null;
  }
  // words of a table cell split over two lines, except after a hyphen, slash or comma
  function brokenWords(cell) {
    var found = [];
    var walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    var node;
    while ((node = walker.nextNode())) {
      var re = /\S+/g, m;
      while ((m = re.exec(node.data))) {
        var range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        var tops = {};
        Array.prototype.forEach.call(range.getClientRects(), function (r) {
          if (r.width > 0) { tops[Math.round(r.top)] = true; }
        });
        if (Object.keys(tops).length < 2) { continue; }
        var previous = lineTop(node, m.index, m.index + 1);
        for (var i = 1; i < m[0].length; i++) {
          var top = lineTop(node, m.index + i, m.index + i + 1);
          if (top !== null && previous !== null && top !== previous && "-/,\u2013".indexOf(m[0][i - 1]) < 0) {
            found.push(m[0].slice(0, i) + "|" + m[0].slice(i));
            break;
          }
          if (top !== null) { previous = top; }
        }
      }
    }
    return found;
  }
  function report() {
    var out = {overflow: [], untypeset: 0, raw_math: [], uncaptioned: [], images: 0, mathjax: null,
               broken_words: [], markers: [], shrunk_figures: []};
    var main = document.querySelector("main") || document.body;
    var boxes = "pre, div.highlight, div.cell_output, div.output, div.cell_input, table, " +
                "div.pst-scrollable-table-container, mjx-container[display='true'], div.math";
    var mainRight = main.getBoundingClientRect().right;
    main.querySelectorAll(boxes).forEach(function (el) {
      var scroller = el.closest(".pst-scrollable-table-container");
      if (scroller) {
        // a table may scroll inside its own box, as long as that box stays inside the column
        if (el === scroller && getComputedStyle(el).overflowX !== "visible" &&
            el.getBoundingClientRect().right <= mainRight + 1) { return; }
        if (el !== scroller && getComputedStyle(scroller).overflowX !== "visible") { return; }
      }
      if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1) {
        out.overflow.push(el.tagName.toLowerCase() + "." + (el.className || "").toString().split(" ")[0] +
                          " (" + el.scrollWidth + " > " + el.clientWidth + " px): " + text(el));
      }
    });
    out.mathjax = window.MathJax && window.MathJax.version ? window.MathJax.version : null;
    main.querySelectorAll(".math").forEach(function (el) {
      if (!el.querySelector("mjx-container")) { out.untypeset += 1; }
    });
    var clone = main.cloneNode(true);
    var skip = "pre, code, .highlight, script, style, mjx-container";
    clone.querySelectorAll(skip).forEach(function (el) { el.remove(); });
    var body = clone.textContent || "";
    ["$$", "\\(", "\\[", "\\begin{"].forEach(function (marker) {
      var at = body.indexOf(marker);
      if (at < 0) { return; }
      out.raw_math.push(marker + " near: " + body.slice(Math.max(0, at - 40), at + 40).replace(/\s+/g, " "));
    });
    main.querySelectorAll("img").forEach(function (img) {
      var src = img.getAttribute("src") || "";
      // the Colab badge (book/_static/colab-badge.svg, copied to _images/) is a link, not a figure
      if (src.indexOf("_images/") < 0 || src.indexOf("colab-badge") >= 0) { return; }
      out.images += 1;
      var fig = img.closest("figure");
      if (!fig || !fig.querySelector("figcaption") || !text(fig.querySelector("figcaption"))) {
        var section = img.closest("section");
        var heading = section ? section.querySelector("h1, h2, h3") : null;
        var where = heading ? " under '" + text(heading).replace("#", "") + "'" : "";
        out.uncaptioned.push("image " + out.images + where);
      }
    });
    main.querySelectorAll("td, th").forEach(function (cell) {
      brokenWords(cell).forEach(function (word) {
        if (out.broken_words.length < 20) { out.broken_words.push(word); }
      });
    });
    var visible = main.innerText || "";
    if (visible.indexOf("NBVAL") >= 0) {
      var at = visible.indexOf("NBVAL");
      out.markers.push("NBVAL near: " + visible.slice(Math.max(0, at - 30), at + 40).replace(/\s+/g, " "));
    }
    var page = document.body.cloneNode(true);
    page.querySelectorAll("script, style").forEach(function (el) { el.remove(); });
    var whole = page.textContent || "";
    var cached = whole.indexOf("(" + "cached");
    if (cached >= 0) {
      out.markers.push("run log near: " + whole.slice(Math.max(0, cached - 60), cached + 30).replace(/\s+/g, " "));
    }
    main.querySelectorAll("img").forEach(function (img) {
      var src = img.getAttribute("src") || "";
      if (src.indexOf("_images/") < 0 || !img.naturalWidth || !img.clientWidth) { return; }
      var scale = img.clientWidth / img.naturalWidth;
      if (scale < MIN_SCALE) {
        out.shrunk_figures.push(src.split("/").pop() + " shown at " + Math.round(100 * scale) + "% (" +
                                img.clientWidth + " of " + img.naturalWidth + " px)");
      }
    });
    var pre = document.createElement("pre");
    pre.id = "PROBE_ID";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) { mj.startup.promise.then(report, report); }
    else { setTimeout(report, 200); }
  });
})();
</script>
""".replace("PROBE_ID", PROBE_ID).replace("MIN_SCALE", "0.9")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180
        )


def _pages(toc: Path) -> list[str]:
    data = yaml.safe_load(toc.read_text())
    pages = [data["root"]]
    for part in data.get("parts", []):
        pages += [c["file"] for c in part.get("chapters", [])]
    return pages


def _figures(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum(
        1
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    )


def mathjax_sources(page_html: str) -> list[str]:
    """The ``src`` of every MathJax script of a page (to check that none comes from a CDN)."""
    return [m for m in re.findall(r"<script[^>]*src=\"([^\"]+)\"", page_html) if "mathjax" in m.lower()]


def probe(binary: str, page: Path) -> tuple[str, dict | None]:
    """Render ``page`` with the probe script; returns the DOM and the probe's report (None if the
    probe did not run)."""
    source = page.read_text()
    copy = page.with_name(f".probe-{page.name}")
    copy.write_text(source.replace("</body>", PROBE + "</body>", 1) if "</body>" in source else source + PROBE)
    try:
        proc = _run(binary, WINDOW, "--virtual-time-budget=20000", "--dump-dom", copy.resolve().as_uri())
    finally:
        copy.unlink(missing_ok=True)
    match = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    return proc.stdout, (json.loads(html_lib.unescape(match.group(1))) if match else None)


def check_report(page: str, page_html: str, report: dict | None) -> list[str]:
    """Problems found by the in-page probe (overflow, math, captions) and in the page source."""
    if report is None:
        return [f"{page}: the in-page check did not run"]
    problems = [f"{page}: horizontal overflow in {item}" for item in report["overflow"]]
    cdn = [s for s in mathjax_sources(page_html) if s.startswith(("http:", "https:", "//"))]
    if cdn:
        problems.append(f"{page}: MathJax comes from the network ({cdn[0]}): the site does not read offline")
    if 'class="math' in page_html and not report["mathjax"]:
        problems.append(f"{page}: MathJax did not load")
    if report["untypeset"]:
        problems.append(f"{page}: {report['untypeset']} math elements not typeset")
    problems += [f"{page}: raw TeX left in the text: {item}" for item in report["raw_math"]]
    problems += [
        f"{page}: figure without caption ({name}; give its cell the metadata mystnb.figure.caption and .name)"
        for name in report["uncaptioned"]
    ]
    problems += [f"{page}: word broken inside a table cell: {word}" for word in report.get("broken_words", [])]
    problems += [f"{page}: plumbing visible to readers: {item}" for item in report.get("markers", [])]
    problems += [
        f"{page}: figure text below 9 pt: {item} (make the figure at most as wide as the column)"
        for item in report.get("shrunk_figures", [])
    ]
    return problems


def check_page(binary: str, html_dir: Path, notebooks: Path, page: str) -> list[str]:
    """Every check of one page of the table of contents."""
    path = html_dir / f"{page}.html"
    if not path.exists():
        return [f"{page}: missing page {path}"]
    dom, report = probe(binary, path)
    if "<body" not in dom:
        return [f"{page}: Chromium could not render it"]
    problems = [f"{page}: shows an error ({m!r})" for m in ERROR_MARKERS if m in dom]
    problems += check_report(page, path.read_text(), report)
    if page.startswith("notebooks/"):
        expected = _figures(notebooks / f"{Path(page).name}.ipynb")
        shown = len(re.findall(r"<img [^>]*src=\"[^\"]*_images/(?!colab-badge)", dom))
        if shown < expected:
            problems.append(f"{page}: {shown} images rendered, {expected} figures produced")
        if "colab.research.google.com" not in dom:
            problems.append(f"{page}: no Colab launch button")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path)
    parser.add_argument("--notebooks", type=Path, required=True, help="folder of the executed notebooks")
    parser.add_argument("--toc", type=Path, default=Path(__file__).resolve().parents[1] / "book" / "_toc.yml")
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--only", nargs="*", default=[], help="check only the pages whose path contains one of these")
    parser.add_argument("--require", action="store_true", help="fail when Chromium is missing (CI)")
    args = parser.parse_args()
    binary = _chromium()
    if binary is None:
        print("check_site: no Chromium found (apt-get install chromium); browser check skipped")
        return 1 if args.require else 0
    problems = []
    pages = [p for p in _pages(args.toc) if not args.only or any(o in p for o in args.only)]
    for page in pages:
        found = check_page(binary, args.html, args.notebooks, page)
        problems += found
        print(f"{page:<45} {'ok' if not found else f'{len(found)} problem(s)'}", flush=True)
    if args.screenshot:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        first = (args.html / f"{_pages(args.toc)[0]}.html").resolve().as_uri()
        _run(binary, f"--screenshot={args.screenshot.resolve()}", WINDOW, "--virtual-time-budget=10000", first)
        print(f"screenshot: {args.screenshot} ({'written' if args.screenshot.exists() else 'MISSING'})")
        if not args.screenshot.exists():
            problems.append("screenshot of the first page was not written")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
