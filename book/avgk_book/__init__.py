"""avgk_book: the package of the tutorial book, beside its chapters (``book/avgk_book``).

It holds what the chapters share and what the study needs beyond the library :mod:`avgk_lib`:
the experiment catalog, grids and tuning (:mod:`~avgk_book.experiments`), the committed reference
results and their reader (:mod:`~avgk_book.references`, ``reference_results/``), the claims ledger
and its statistics (:mod:`~avgk_book.claims`, :mod:`~avgk_book.stats`), the analyses, figures,
tables and findings of the chapters, and the Colab helpers (:mod:`~avgk_book.colab`).

Not needed to use the losses, metrics, set predictors or the trainer: ``import avgk_lib`` loads
nothing of it. Installing it (``pip install ./book``) brings what a chapter needs (matplotlib,
seaborn, scipy, ``avgk_lib[train]``); ``python -m avgk_book`` runs the named experiments.
"""

__version__ = "0.1.0"
