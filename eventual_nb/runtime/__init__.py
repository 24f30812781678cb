"""The runtimes: the protocol they share (`base`), the TestEnvironment (`testing`), the LocalRuntime on SQLite
(`local`) and the AWS runtime (`aws`). `aws` does not build on `local` (an import-linter contract in pyproject.toml)."""
