"""Helpers of the tutorial book: analyses behind its figures and tables, plots, claims, display.

Not needed to use the losses, metrics or set predictors; importing this subpackage needs the
``book`` extra (matplotlib, seaborn, scipy).
"""
