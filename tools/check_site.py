"""Open every built page of the book in headless Chromium and check what a reader would see.

    python tools/check_site.py _build/book/_build/html --notebooks _build/book/notebooks \
        --screenshot .ci-artifacts/first_page.png

For each page of the table of contents: the page exists, Chromium renders it, the rendered DOM
shows no Python traceback or error output, and a notebook page holds at least as many images
as its executed notebook produced figures and a Colab launch button. Exits non-zero on any failure. Without Chromium it
exits 0 with a notice, unless ``--require`` (CI) is given.
"""

from __future__ import annotations

import argparse
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
ERROR_MARKERS = [
    "Traceback (most recent call last)",
    "output traceback",
    "output error",
    "Error in cell",
    "Exception: ",
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path)
    parser.add_argument("--notebooks", type=Path, required=True, help="folder of the executed notebooks")
    parser.add_argument("--toc", type=Path, default=Path(__file__).resolve().parents[1] / "book" / "_toc.yml")
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--require", action="store_true", help="fail when Chromium is missing (CI)")
    args = parser.parse_args()
    binary = _chromium()
    if binary is None:
        print("check_site: no Chromium found (apt-get install chromium); browser check skipped")
        return 1 if args.require else 0
    problems = []
    for page in _pages(args.toc):
        html = args.html / f"{page}.html"
        if not html.exists():
            problems.append(f"{page}: missing page {html}")
            continue
        proc = _run(binary, "--dump-dom", html.resolve().as_uri())
        dom = proc.stdout
        if proc.returncode != 0 or "<body" not in dom:
            problems.append(f"{page}: Chromium could not render it ({proc.stderr.strip()[-300:]})")
            continue
        for marker in ERROR_MARKERS:
            if marker in dom:
                problems.append(f"{page}: shows an error ({marker!r})")
        if page.startswith("notebooks/"):
            expected = _figures(args.notebooks / f"{Path(page).name}.ipynb")
            shown = len(re.findall(r"<img [^>]*src=\"[^\"]*_images/", dom))
            if shown < expected:
                problems.append(f"{page}: {shown} images rendered, {expected} figures produced")
            if "colab.research.google.com" not in dom:
                problems.append(f"{page}: no Colab launch button")
            print(f"{page:<45} ok  ({shown} images, {expected} figures)")
        else:
            print(f"{page:<45} ok")
    if args.screenshot:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        first = (args.html / f"{_pages(args.toc)[0]}.html").resolve().as_uri()
        _run(binary, f"--screenshot={args.screenshot.resolve()}", "--window-size=1280,1600", first)
        print(f"screenshot: {args.screenshot} ({'written' if args.screenshot.exists() else 'MISSING'})")
        if not args.screenshot.exists():
            problems.append("screenshot of the first page was not written")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
