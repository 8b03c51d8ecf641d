"""nestlearn.models (see the package docstring)."""
