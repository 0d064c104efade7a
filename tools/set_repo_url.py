"""Point the book at another repository: ``make set-repo-url URL=https://github.com/OWNER/NAME``.

    python tools/set_repo_url.py https://github.com/OWNER/NAME [--root DIR] [--dry-run]

The URL's single source is ``repository.url`` in ``book/_config.yml`` (the book's launch and
repository buttons read it). Copies of it live where a reader meets them outside the book: the
Colab badge and the Colab install cell of every notebook, the clone command in
``book/how_to_run.md`` and any other tracked text file that spells it. This script reads the
current URL from the config and rewrites every copy, both forms: ``https://github.com/OLD/REPO``
and Colab's ``colab.research.google.com/github/OLD/REPO/``. It needs only the standard library.
``tests/test_notebooks.py`` checks that the notebooks agree with the config.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path("book") / "_config.yml"
URL_PATTERN = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")
TEXT_SUFFIXES = {".md", ".yml", ".yaml", ".toml", ".ipynb", ".py", ".txt", ".cfg", ".rst"}
FALLBACK_GLOBS = ("book/*", "notebooks/*.ipynb", "README.md", "pyproject.toml", "environment.yml")


def current_url(root: Path = ROOT) -> str:
    """``repository.url`` of ``book/_config.yml`` (read without a YAML library)."""
    text = (root / CONFIG).read_text()
    block = re.search(r"^repository:\s*\n((?:[ \t]+.*\n?)+)", text, flags=re.MULTILINE)
    url = re.search(r"^\s+url:\s*['\"]?([^\s'\"#]+)", block.group(1), flags=re.MULTILINE) if block else None
    if url is None or not URL_PATTERN.fullmatch(url.group(1).rstrip("/")):
        raise ValueError(f"{root / CONFIG} has no `repository: url: https://github.com/OWNER/NAME` entry")
    return url.group(1).rstrip("/")


def candidate_files(root: Path) -> list[Path]:
    """Tracked text files (``git ls-files``), or the book's usual files outside a git checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, timeout=30, check=True
        ).stdout.split("\0")
        files = [root / name for name in listed if name]
    except (OSError, subprocess.SubprocessError):
        files = [p for pattern in FALLBACK_GLOBS for p in root.glob(pattern)]
    this = Path(__file__).resolve()
    return sorted({p for p in files if p.suffix in TEXT_SUFFIXES and p.is_file() and p.resolve() != this})


def rewrite(text: str, old: str, new: str) -> str:
    """Both spellings of the repository: its URL and Colab's ``github/OWNER/NAME/`` path."""
    old_slug, new_slug = old.removeprefix("https://github.com/"), new.removeprefix("https://github.com/")
    text = re.sub(re.escape(old) + r"(?![\w-])", new, text)
    colab = "colab.research.google.com/github/"
    return text.replace(f"{colab}{old_slug}/", f"{colab}{new_slug}/")


def set_repo_url(new: str, root: Path = ROOT, dry_run: bool = False) -> list[Path]:
    """Rewrite every copy of the current URL to ``new``; returns the files changed (or to change)."""
    new = new.rstrip("/")
    if not URL_PATTERN.fullmatch(new):
        raise ValueError(f"URL must look like https://github.com/OWNER/NAME, got {new!r}")
    old = current_url(root)
    changed = []
    for path in candidate_files(root):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        updated = rewrite(text, old, new)
        if updated != text:
            changed.append(path)
            if not dry_run:
                path.write_text(updated)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="https://github.com/OWNER/NAME")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--dry-run", action="store_true", help="list the files without writing them")
    args = parser.parse_args(argv)
    try:
        changed = set_repo_url(args.url, args.root, args.dry_run)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "would update" if args.dry_run else "updated"
    for path in changed:
        print(f"{verb} {path.relative_to(args.root)}")
    if not changed:
        print("nothing to change: the repository URL is already", args.url.rstrip("/"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
