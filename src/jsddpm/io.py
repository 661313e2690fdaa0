"""Atomic outputs and run records: nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def require_free_output(out: str | os.PathLike) -> None:
    """An output folder must not exist or be empty: results are never mixed into an older run."""
    from .errors import UserError

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: output folder exists and is not empty; choose another --out or delete it")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `out` only if the body finishes.

    On any exception the temporary folder is removed, so `out` either holds a complete result or
    does not exist (or keeps its previous content when it existed before).
    """
    out = Path(out)
    if not overwrite:
        require_free_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs should look like any other folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    """np.save through a temporary file, so a crash never leaves a truncated .npy."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent, suffix=".npy")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def versions() -> dict[str, str]:
    """Versions of the interpreter and of the packages whose behaviour shapes results."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("jsddpm", "torch", "numpy", "scipy", "lightning", "nibabel", "omegaconf",
                 "scikit-image", "scikit-learn", "pywavelets", "nilearn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_run_record(folder: str | os.PathLike, cfg=None) -> None:
    """Every output folder holds the resolved `config.yaml` and a `versions.json`."""
    folder = Path(folder)
    if cfg is not None:
        from .config import to_yaml

        atomic_write_text(folder / "config.yaml", to_yaml(cfg))
    atomic_write_text(folder / "versions.json", json.dumps(versions(), indent=2) + "\n")
