"""Point the book at another repository: ``python tools/set_repo_url.py https://github.com/OWNER/NAME``.

The URL's one configurable place is ``book/_config.yml`` (``repository.url``, used by the launch
buttons). Notebooks carry it too (Colab badge, Colab install cell), because they are opened
outside the book; this script rewrites all of them, and a test checks that they agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def current_url() -> str:
    import yaml

    return yaml.safe_load((ROOT / "book" / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def main() -> int:
    if len(sys.argv) != 2 or not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", sys.argv[1].rstrip("/")):
        print(__doc__)
        return 2
    new, old = sys.argv[1].rstrip("/"), current_url()
    old_slug, new_slug = old.removeprefix("https://github.com/"), new.removeprefix("https://github.com/")
    files = [
        ROOT / "book" / "_config.yml",
        ROOT / "book" / "how_to_run.md",
        *sorted((ROOT / "notebooks").glob("*.ipynb")),
    ]
    for path in files:
        text = path.read_text()
        updated = text.replace(old, new).replace(f"github/{old_slug}/", f"github/{new_slug}/")
        if updated != text:
            path.write_text(updated)
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
