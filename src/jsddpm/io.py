"""Atomic outputs, output-folder locks and run records: nothing half-written is ever left behind, and
no two runs write into one folder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError, first_line


def require_free_output(out: str | os.PathLike) -> None:
    """An output folder must not exist or be empty: results are never mixed into an older run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is a file, not a folder; choose another --out or delete the file")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: output folder exists and is not empty; choose another --out or delete it")


# ------------------------------------------------------------------------------------- locks
# lock file path -> [open file descriptor, depth]: one process may nest locks on the same folder (a
# command locks its --out and then atomic_dir locks it again); flock would refuse the second open
_HELD: dict[str, list[int]] = {}


def lock_path(out: str | os.PathLike) -> Path:
    """`.NAME.lock` beside the output folder: the folder itself may not exist yet (atomic_dir)."""
    real = Path(out).resolve()
    return real.parent / f".{real.name}.lock"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on output folder `out` for the body; a second run into it fails at once.

    flock(2) on `.NAME.lock` beside the folder: the kernel releases it when the holder exits, however
    it dies, so a lock left by a killed process never blocks (the stale file is simply locked again).
    The file is removed on release; the inode check after locking makes that removal race-free.
    """
    import fcntl

    path = lock_path(out)
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as exc:  # name the output the user gave, not our lock file
            raise OSError(exc.errno, exc.strerror, str(out)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            who = f" (pid {holder})" if holder else ""
            raise UserError(f"{out}: another jsddpm run{who} is writing into this folder; wait for it to "
                            "finish or choose another output folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is only for the message a second run prints
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def remove_stale_temps(out: str | os.PathLike) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` left beside `out` by runs that died (kill -9, power loss).

    Call only while holding `output_lock(out)`: every live writer of such a folder holds that lock, so
    whatever is there belongs to a dead process.
    """
    real = Path(out).resolve()
    removed = []
    if not real.parent.is_dir():
        return removed
    for pattern in (f".{real.name}.tmp-*", f".{real.name}.old-*"):
        for stale in real.parent.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()
            removed.append(stale)
    return removed


def _refuse_current_folder(out: Path) -> None:
    real, here = out.resolve(), Path.cwd().resolve()
    if real == here or real in here.parents:
        raise UserError(f"{out}: is the current folder or holds it; a run cannot replace the folder it is "
                        "started from; give an output folder of its own, e.g. --out results")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `out` only if the body finishes.

    The body runs under `output_lock(out)`. On any exception the temporary folder is removed, so `out`
    either holds a complete result or does not exist (or keeps its previous content when it existed
    before). Temporary folders of earlier runs that died are removed first.
    """
    out = Path(out)
    _refuse_current_folder(out)
    if out.exists() and not out.is_dir():
        require_free_output(out)  # a file is never replaced, even with overwrite
    if not overwrite:
        require_free_output(out)
    with output_lock(out):
        remove_stale_temps(out)
        real = out.resolve()
        tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.tmp-", dir=real.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs should look like any other folder
            yield tmp
            if real.exists():
                if not overwrite and (not real.is_dir() or any(real.iterdir())):
                    raise UserError(f"{out}: appeared while this run was working; the result was not "
                                    "written; choose another output folder")
                old = real.with_name(f".{real.name}.old-{os.getpid()}")
                real.rename(old)
                tmp.rename(real)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(real)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            inside = isinstance(exc, OSError) and exc.filename and Path(str(exc.filename)).is_relative_to(tmp)
            if inside:  # name the output the user asked for, not the temporary folder that is gone now
                where = out / Path(str(exc.filename)).relative_to(tmp)
                raise OSError(exc.errno, exc.strerror, str(where)) from None
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        with _naming(path), os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A write's OSError (a full disk: ENOSPC) carries no file name; give it the file being written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        code = exc.errno
        if code is None:  # numpy reports a short write as "N requested and M written", without errno
            with contextlib.suppress(OSError):
                code = errno.ENOSPC if os.statvfs(path.parent).f_bavail == 0 else None
        if code is None:
            raise OSError(errno.EIO, f"write failed ({exc})", str(path)) from None
        raise OSError(code, exc.strerror or str(exc), str(path)) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    """np.save through a temporary file, so a crash never leaves a truncated .npy."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent, suffix=".npy")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with _naming(path):
            np.save(tmp, array)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------ reading
# what a damaged or foreign file raises while being parsed (numpy, zip, json, pickle, text decoding)
FORMAT_ERRORS = (ValueError, EOFError, UnicodeDecodeError, KeyError, IndexError, TypeError)


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str, fix: str) -> Iterator[None]:
    """Parse errors raised in the body become one UserError naming `path`: "PATH: not a readable WHAT
    (reason); FIX". OS errors (missing, unreadable) pass on: the CLI names their path itself."""
    import zipfile

    try:
        yield
    except UserError:
        raise
    except (*FORMAT_ERRORS, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable {what} ({first_line(exc)}); {fix}") from None


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
