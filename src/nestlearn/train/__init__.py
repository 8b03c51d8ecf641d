"""nestlearn.train (see the package docstring)."""
