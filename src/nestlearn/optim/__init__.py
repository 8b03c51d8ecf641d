"""nestlearn.optim (see the package docstring)."""
