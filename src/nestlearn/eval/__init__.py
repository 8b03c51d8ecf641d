"""nestlearn.eval (see the package docstring)."""
