"""The version of eventual-nb, written here only: `eventual_nb.__version__` re-exports it and the build reads it
(pyproject.toml, `[tool.setuptools.dynamic]`). A module of its own so that code inside `eventual_nb` can
name it without importing the package's public facade (`eventual_nb/__init__.py`, which imports everything)."""

__version__ = "0.1.0"
