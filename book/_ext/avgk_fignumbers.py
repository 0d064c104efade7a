"""Figures numbered per chapter: "Figure 4.2" is the second figure of chapter 4.

Sphinx numbers figures across the whole book unless the table of contents is numbered (which would
number the chapter titles a second time: they carry their number already). This extension runs after
Sphinx has assigned its numbers and renumbers each page's figures from 1, prefixed by the chapter
number read from the notebook's file name (``notebooks/04_label_noise`` -> 4); a page without one
(the introduction, the protocol) numbers its figures 1, 2, ... Cross-references read the same table,
so they follow."""

from __future__ import annotations

import re

CHAPTER = re.compile(r"(?:^|/)(\d+)_[^/]*$")


def chapter_of(docname: str) -> int | None:
    """The chapter number of a page from its file name, or None."""
    match = CHAPTER.search(docname)
    return int(match.group(1)) if match else None


def renumber(fignumbers: dict[str, dict[str, dict[str, tuple[int, ...]]]]) -> None:
    """Renumber in place: per page and figure type, in the order Sphinx numbered them."""
    for docname, types in fignumbers.items():
        chapter = chapter_of(docname)
        for ids in types.values():
            for i, (fid, _) in enumerate(sorted(ids.items(), key=lambda kv: kv[1]), start=1):
                ids[fid] = (chapter, i) if chapter is not None else (i,)


def _on_env_updated(app, env):
    renumber(env.toc_fignumbers)
    return []


def setup(app):
    app.connect("env-get-updated", _on_env_updated, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
