"""The backend-free core of a workflow: the history model, the deterministic loop, replay and the commands a
workflow step issues. It imports nothing of `eventual_nb.runtime` (an import-linter contract in pyproject.toml)."""
