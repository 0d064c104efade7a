"""Sphinx extension of the book: an author-year bibliography style for sphinxcontrib-bibtex.

pybtex's built-in styles label entries with numbers ("[1]") or letters ("[GSJS22]") while the
text cites "Garcin et al. (2022)". The ``authoryear`` style registered here keeps pybtex's plain
formatting and sorting (by author) and labels each entry the way the text cites it:
"Clark, 1961", "Denis and Hebiri, 2017", "Garcin et al., 2022" (a, b suffixes on collisions).
"""

from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _authors(entry) -> str:
    names = [" ".join(p.last_names) for p in entry.persons.get("author", [])]
    if not names:
        return entry.fields.get("title", "?")[:20]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} et al."


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Authors, year", with a/b/... appended when two entries would share a label."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        base = [f"{_authors(e)}, {e.fields.get('year', 'n.d.')}" for e in entries]
        counts, seen = Counter(base), Counter()
        for label in base:
            if counts[label] > 1:
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            else:
                yield label


class AuthorYearStyle(PlainStyle):
    """pybtex's plain style (sorted by author) with author-year labels."""

    default_label_style = AuthorYearLabelStyle


def setup(app):
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
