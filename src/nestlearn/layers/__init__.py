"""nestlearn.layers (see the package docstring)."""
