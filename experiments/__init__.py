"""Experiments built on the nestlearn library (run from the repository root with
``python -m experiments.<name>``); the library never imports them."""
