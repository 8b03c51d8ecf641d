"""nestlearn.data (see the package docstring)."""
