"""`lambda.zip`: the exported service, eventual-nb and what Lambda imports of its dependencies, for Lambda's
Python 3.12 on x86_64.

Layout (everything at the zip's root, as Lambda imports it): `handlers.py`, the exported package,
`eventual_nb/` (the SDK only: the notebook extension and the exporter do not run on Lambda) with a small
`eventual_nb-<version>.dist-info`, and the dependencies the functions import (`LAMBDA_DEPENDENCIES`: pydantic,
fastapi, msgspec for the engine's history events, and cronsim and tzdata for schedules, with everything they require) unpacked from manylinux wheels. The rest of the core install is for the command
line, the local server and `ServiceClient` (rich, uvicorn, httpx and what they pull in: pygments,
markdown-it-py, click, h11, httpcore, certifi) and stays out: nothing on the Lambda path imports them at
module level. boto3 and botocore are left out because every Lambda Python runtime ships them.

Reproducible: the bytes depend only on the exported files, the eventual-nb source and the versions installed
in the building environment. Dependencies are pinned to exactly the versions installed here (resolved from
eventual-nb's metadata with markers evaluated for the Lambda interpreter, not this one), files pip writes with
paths or per-install content are dropped, and the zip has sorted entries, one fixed timestamp, mode 0644 and a
fixed compression level. So its sha256 can name its S3 key: CloudFormation only redeploys code whose key changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import eventual_nb
from exporter.errors import ExportError

DISTRIBUTION = "eventual-nb"
PLATFORM = "manylinux2014_x86_64"
PYTHON_VERSION = "3.12"
#: Lambda's interpreter, for evaluating dependency markers (python_version, sys_platform, ...)
TARGET_ENVIRONMENT: dict[str, str] = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.0",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.0",
    "python_version": PYTHON_VERSION,
    "sys_platform": "linux",
}
#: provided by every Lambda Python runtime
PROVIDED_BY_LAMBDA = frozenset({"boto3", "botocore"})
#: eventual-nb's own dependencies that the functions import: the SDK's models (pydantic) and the API
#: function's app (fastapi); each comes with what it requires
LAMBDA_DEPENDENCIES = frozenset({"pydantic", "fastapi", "cronsim", "tzdata", "msgspec"})
#: Lambda's limit for a zip uploaded directly
SIZE_LIMIT = 50 * 1024 * 1024
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
#: a regular file, rw-r--r-- (Lambda reads files as another user than the one who built the zip)
FILE_MODE = stat.S_IFREG | 0o644
COMPRESS_LEVEL = 9
#: what pip writes into a .dist-info that depends on the install (paths, the installer) rather than the wheel
INSTALL_RECORDS = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
PIP_TIMEOUT_SECONDS = 900


def build_lambda_zip(export_dir: Path, out: Path, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """Write `out` (the deploy bundle of the export in `export_dir`); answer {"sha256", "size", "s3_key"}.

    `cache_dir`: pip's download cache (default: pip's own), so repeated builds do not download again.
    """
    export_dir = Path(export_dir)
    out = Path(out)
    package = _package_of(export_dir)
    handlers = export_dir / "handlers.py"
    if not handlers.is_file():
        raise ExportError(f"{export_dir} has no handlers.py: export the notebook before building its lambda.zip")
    with tempfile.TemporaryDirectory(prefix="eventual-lambda-") as scratch:
        stage = Path(scratch) / "stage"
        stage.mkdir()
        install_dependencies(stage, lambda_requirements(), cache_dir=cache_dir)
        for top_level in (package, "eventual_nb", "handlers.py", "handlers"):
            if (stage / top_level).exists():
                raise ExportError(
                    f"a dependency of eventual-nb installs a top-level {top_level!r}, which would shadow the export's "
                    "own; rename the service"
                )
        _copy_sources(export_dir / package, stage / package)
        shutil.copyfile(handlers, stage / "handlers.py")
        _copy_sources(Path(eventual_nb.__file__).parent, stage / "eventual_nb")
        _write_own_metadata(stage)
        _clean(stage)
        partial = out.with_name(f".{out.name}.partial")
        try:
            write_zip(stage, partial)
            size = partial.stat().st_size
            if size >= SIZE_LIMIT:
                raise ExportError(
                    f"lambda.zip would be {size / 2**20:.1f} MiB; Lambda takes at most {SIZE_LIMIT // 2**20} MiB"
                )
            digest = hashlib.sha256(partial.read_bytes()).hexdigest()
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return {"sha256": digest, "size": size, "s3_key": f"lambda/{digest}.zip"}


def _package_of(export_dir: Path) -> str:
    """The exported package's name: the manifest's "package", else the one package directory in DIR."""
    manifest = export_dir / "eventual.json"
    if manifest.is_file():
        package = json.loads(manifest.read_text(encoding="utf-8")).get("package")
        if isinstance(package, str) and (export_dir / package / "__init__.py").is_file():
            return package
        raise ExportError(f"{manifest} names package {package!r}, which is not a package directory beside it")
    found = sorted(path.parent.name for path in export_dir.glob("*/__init__.py"))
    if len(found) != 1:
        raise ExportError(f"{export_dir} is not an export: expected one package directory, found {found or 'none'}")
    return found[0]


# -------------------------------------------------------------------------------------------- requirements


def lambda_requirements() -> list[str]:
    """What the functions import: eventual-nb's dependencies named in `LAMBDA_DEPENDENCIES`, recursively, as
    `name==version` of what is installed here (sorted).

    Markers are evaluated for Lambda's interpreter: a dependency only Python 3.12 needs must be installed
    here too (its version is taken from here), one only this interpreter needs is left out.
    """
    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    pending: list[tuple[str, str]] = [(DISTRIBUTION, "")]
    while pending:
        name, extra = pending.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ExportError(
                f"{name} is needed on Lambda (Python {PYTHON_VERSION}) but is not installed here, so its version cannot "
                f"be pinned: pip install {name}"
            ) from None
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(
                {**TARGET_ENVIRONMENT, "extra": extra}
            ):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency in PROVIDED_BY_LAMBDA or dependency == DISTRIBUTION:
                continue
            if name == DISTRIBUTION and dependency not in LAMBDA_DEPENDENCIES:
                continue  # the command line's, the local server's or ServiceClient's
            try:
                installed = importlib.metadata.version(dependency)
            except importlib.metadata.PackageNotFoundError:
                raise ExportError(
                    f"{dependency} (required by {name}) is needed on Lambda (Python {PYTHON_VERSION}) but is not "
                    f"installed here, so its version cannot be pinned: pip install '{requirement}'"
                ) from None
            if not requirement.specifier.contains(installed, prereleases=True):
                raise ExportError(
                    f"{name} requires {requirement}, but {dependency} {installed} is installed: fix the environment"
                )
            pins[dependency] = installed
            pending.append((dependency, ""))
            pending.extend((dependency, wanted) for wanted in sorted(requirement.extras))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def install_dependencies(stage: Path, requirements: list[str], *, cache_dir: Path | None = None) -> None:
    """Unpack manylinux wheels for Lambda's interpreter into `stage` (no dependency resolution: the pins are
    complete, and resolving against the index could pull in versions that are not the ones installed here)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(stage),
        "--platform",
        PLATFORM,
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--only-binary=:all:",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--quiet",
    ]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    result = subprocess.run(
        [*command, *requirements],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise ExportError(
            f"pip could not fetch the Lambda (Python {PYTHON_VERSION}, {PLATFORM}) wheels of "
            f"{' '.join(requirements)}:\n{result.stderr.strip() or result.stdout.strip()}"
        )


# ------------------------------------------------------------------------------------------------ staging


def _copy_sources(source: Path, target: Path) -> None:
    """Copy a package's files, without bytecode caches or hidden files (editor and tool leftovers)."""

    def ignored(directory: str, names: list[str]) -> set[str]:
        return {name for name in names if name == "__pycache__" or name.startswith(".") or name.endswith(".pyc")}

    shutil.copytree(source, target, ignore=ignored)


def _write_own_metadata(stage: Path) -> None:
    """A minimal dist-info so `importlib.metadata.version("eventual-nb")` answers on Lambda as it does here."""
    version = eventual_nb.__version__
    info = stage / f"eventual_nb-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {DISTRIBUTION}", f"Version: {version}"]
    (info / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (info / "top_level.txt").write_text("eventual_nb\n", encoding="utf-8")


def _clean(stage: Path) -> None:
    """Drop what would make the bytes depend on the build (paths, installer records) or is dead weight."""
    # console scripts: their shebangs name this machine's interpreter, and Lambda never runs them
    shutil.rmtree(stage / "bin", ignore_errors=True)
    for path in sorted(stage.rglob("*"), reverse=True):
        if path.is_dir() and path.name == "__pycache__":
            shutil.rmtree(path)
        elif path.is_file() and (
            path.suffix in (".pyc", ".pyo")
            or (path.parent.name.endswith(".dist-info") and path.name in INSTALL_RECORDS)
        ):
            path.unlink()


def write_zip(stage: Path, out: Path) -> None:
    """Zip every file under `stage`: sorted entries, fixed timestamp and mode, fixed compression, no extra fields."""
    files = sorted((path.relative_to(stage).as_posix(), path) for path in stage.rglob("*") if path.is_file())
    with zipfile.ZipFile(out, "w") as archive:
        for name, path in files:
            entry = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
            entry.create_system = 3  # Unix, so the mode below is read as POSIX permissions
            entry.external_attr = FILE_MODE << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL)
