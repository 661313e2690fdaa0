"""How a stage fails: the exceptions a user can cause, and the one line (and exit code) each becomes.
The bottom of the package: it imports nothing of jsddpm, so every module can raise and format these.

The CLI prints `jsddpm COMMAND: <line>` on stderr and exits with the code (docs/failures.md):
- `UserError` (bad input, bad config, a busy or non-empty output folder, a damaged file): exit 2;
- `OSError` (missing or unreadable path, read-only or full file system): exit 2, naming the path;
- a malformed file that slipped past the loaders' own checks (zip, JSON, YAML, pickle, text decoding):
  exit 2;
- `Interrupted` / `KeyboardInterrupt` (SIGINT or SIGTERM): exit 130, after a resumable checkpoint
  where the stage has one;
- anything else is a bug: Python's traceback, exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import signal
from collections.abc import Iterator


class UserError(Exception):
    """Bad input, bad config or a missing file: the message names the file and the fix."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a stage cleanly; the message says what was kept (e.g. last.ckpt)."""


_OS_HINTS = {
    errno.ENOSPC: "no space left on device; free some space or choose an output folder on another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or choose an output folder on another disk",
    errno.EROFS: "read-only file system; choose a writable output folder",
    errno.EACCES: "permission denied; choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EISDIR: "is a folder, not a file; give a file",
    errno.ENOTDIR: "a part of this path is a file, not a folder; check the path",
    errno.ELOOP: "symlink loop; fix the link",
    errno.EIO: "input/output error from the storage; check the disk",
}


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first line, cut at a word boundary: what a one-line error shows of a cause."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def os_error_line(exc: OSError) -> str:
    hint = _OS_HINTS.get(exc.errno or -1) or (exc.strerror or str(exc)).strip()
    where = exc.filename if exc.filename is not None else None
    if where is not None and exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {hint}" if where is not None else hint


def _format_errors() -> tuple[type[BaseException], ...]:
    import json
    import pickle
    import zipfile

    types: list[type[BaseException]] = [zipfile.BadZipFile, json.JSONDecodeError, pickle.UnpicklingError,
                                         UnicodeDecodeError, EOFError]
    with contextlib.suppress(ImportError):
        import yaml

        types.append(yaml.YAMLError)
    return tuple(types)


def root_cause(exc: BaseException) -> BaseException:
    """Lightning's own exceptions wrap the real one (`raise X from cause`): report the cause."""
    seen = set()
    while (type(exc).__module__.startswith(("lightning", "pytorch_lightning"))
           and exc.__cause__ is not None and id(exc) not in seen):
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def describe_failure(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for an expected kind of failure; None for a bug (let the traceback show)."""
    exc = root_cause(exc)
    if isinstance(exc, Interrupted):
        return 130, f"interrupted; {exc}" if str(exc) else "interrupted"
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "SIGTERMException":
        return 130, "interrupted"
    if isinstance(exc, UserError):
        return 2, f"error: {exc}"
    if isinstance(exc, OSError):
        return 2, f"error: {os_error_line(exc)}"
    if isinstance(exc, _format_errors()):
        return 2, f"error: a file could not be parsed ({type(exc).__name__}: {first_line(exc)})"
    return None


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (what a cluster sends before killing a job) behaves like Ctrl+C for the body: the stage
    unwinds, atomic outputs clean up, and the CLI exits 130. Training installs its own handlers that
    first write a resumable checkpoint."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
