"""Output folders that never lose user data, and the run lock.

The rule (like ``git clone`` or ``nnUNetv2_predict`` refusing to clobber): lesionuq writes
only into a folder that is

- new (it is created), or
- empty, or
- a folder lesionuq wrote before, recognised by its marker file :data:`MARKER` only
  (a folder that merely holds a ``config.yaml`` and a ``folds.json`` is someone else's).

Anything else (a file, a foreign non-empty folder, the folder of an input or a folder
holding an input) is refused with one sentence by :func:`check_output_dir` *before* any
computation. A previous lesionuq output of the same kind is replaced only with
``overwrite=True`` (``--overwrite``), and even then only the files listed in its marker
(the files lesionuq wrote there) are removed; a user's own files are kept, and an
output whose file names would replace a file the marker does not list is refused. A
marker is trusted only as far as it lists regular files and sub-folders inside its own
folder: an absolute path, a ``..``, a symbolic link or anything that is not a regular
file is refused (a tampered marker cannot make lesionuq delete files elsewhere). Run
directories and batch predictions with the same settings are resumed instead.

Files are built in a temporary folder ``.tmp-lesionuq-PID-*`` inside the output folder and
moved into place when complete (:func:`output_dir`), so a failure leaves nothing
half-written; a temporary folder left by a killed process is removed on the next start.

A run directory is guarded by :func:`run_lock`, an exclusive OS lock (``fcntl.flock``) on
``RUN/.lesionuq.lock`` that the OS releases when the process exits or crashes. A second
process gets one sentence naming the PID that holds the run. The lock file is opened
without following a symbolic link (``O_NOFOLLOW``) and must be a regular file. A
prediction holds the same lock on its output folder (:func:`locked_output`), so two
predictions into one folder cannot both run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from lesionuq.io import InputError, atomic_write_text, disk_full_guard

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no OS lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_FILE",
    "MARKER",
    "OutputMarker",
    "add_written",
    "check_output_dir",
    "clean_stale_temp",
    "locked_output",
    "output_dir",
    "read_marker",
    "remove_written",
    "run_lock",
    "start_output",
    "verify_marker",
]

#: Marker file of every output folder lesionuq writes (kind, settings key, files written).
MARKER = ".lesionuq.json"
#: Lock file of a run directory.
LOCK_FILE = ".lesionuq.lock"
#: Prefix of the temporary folders that :func:`output_dir` builds in.
TMP_PREFIX = ".tmp-lesionuq-"
#: Output kinds and what the user calls them in messages.
KINDS = {
    "prediction": "prediction",
    "batch": "batch prediction",
    "maps": "set of voxel maps",
    "samples": "set of sample stacks",
    "bids": "BIDS-derivatives data set",
    "run": "run directory",
    "phantom": "phantom data set",
    "derived": "set of derived masks",
    "model": "refitted model folder",
}


@dataclass
class OutputMarker:
    """Content of :data:`MARKER`.

    Attributes:
        kind: One of :data:`KINDS`.
        key: Digest of the settings that made the output (None: not resumable).
        files: Files lesionuq wrote, relative to the folder.
        dirs: Sub-folders that are lesionuq outputs with their own marker.
    """

    kind: str
    key: str | None = None
    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)


def read_marker(folder: str | Path) -> OutputMarker | None:
    """The marker of ``folder``, or None when lesionuq did not write it.

    Only the marker file :data:`MARKER` counts: a folder holding a ``config.yaml`` and a
    ``folds.json`` but no marker is not lesionuq's. Every entry is checked by its text
    (cheap, on every read); :func:`verify_marker` also checks the files on disk.

    Raises:
        InputError: The marker is tampered with: it lists an absolute path or one that
            leaves the folder with ``..``.
    """
    folder = Path(folder)
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        return None
    files, dirs = data.get("files", []), data.get("dirs", [])
    if not isinstance(files, list) or not isinstance(dirs, list):
        raise _tampered(folder, "a file list that is not a list")
    marker = OutputMarker(
        data["kind"], data.get("key"), [str(f) for f in files], [str(d) for d in dirs]
    )
    for name in [*marker.files, *marker.dirs]:
        parts = name.replace(os.sep, "/").split("/")
        if not name or os.path.isabs(name) or ".." in parts or parts[0] == MARKER:
            raise _tampered(folder, f"the path {name[:80]!r} outside its folder")
    return marker


def verify_marker(folder: str | Path, marker: OutputMarker | None = None) -> None:
    """Check on disk that every entry of a marker is a regular file (folder) inside it.

    Called before an output may replace or remove what the marker lists
    (:func:`check_output_dir`, :func:`remove_written`), so a tampered marker cannot make
    lesionuq delete or overwrite a file elsewhere, through a symbolic link or otherwise.

    Args:
        folder: The output folder.
        marker: Its marker (default: read it).

    Raises:
        InputError: An entry leads outside the folder (through a symbolic link), or is a
            symbolic link or not a regular file (a listed sub-folder: not a folder).
    """
    folder = Path(folder)
    marker = read_marker(folder) if marker is None else marker
    if marker is None:
        return
    root = folder.resolve()
    inside: dict[Path, bool] = {}  # parent folder -> resolves inside ``root``
    for name, directory in [*((f, False) for f in marker.files), *((d, True) for d in marker.dirs)]:
        path = folder / name
        parent = path.parent
        if parent not in inside:
            real = parent.resolve()
            inside[parent] = real == root or root in real.parents
        shown = repr(name[:80])
        if not inside[parent]:
            raise _tampered(folder, f"the path {shown}, which leads outside its folder")
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
            kind = "folder" if directory else "regular file"
            raise _tampered(
                folder, f"{shown}, which is not a {kind} but a symbolic link or another kind"
            )


def _tampered(folder: Path, what: str) -> InputError:
    return InputError(
        f"{folder / MARKER}: lists {what}, so the marker was not written by lesionuq; "
        "lesionuq refuses to touch the folder (remove the marker or choose another folder)."
    )


def _write_marker(folder: Path, marker: OutputMarker) -> None:
    payload = {
        "kind": marker.kind,
        "key": marker.key,
        "files": sorted(set(marker.files)),
        "dirs": sorted(set(marker.dirs)),
    }
    atomic_write_text(folder / MARKER, json.dumps(payload, indent=1) + "\n")


def _writable_dir(folder: Path, out: Path) -> None:
    if not folder.is_dir():
        raise InputError(f"{out}: cannot be created because {folder} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"{out}: cannot write there ({folder} is not writable); choose another output folder."
        )


def _contains(folder: Path, path: Path) -> bool:
    return folder == path or folder in path.parents


def check_output_dir(
    out: str | Path,
    kind: str,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    key: str | None = None,
    writes: Sequence[str] = (),
) -> Path:
    """Check, before any computation, that ``out`` may receive an output of ``kind``.

    Args:
        out: The output folder.
        kind: One of :data:`KINDS`.
        overwrite: Allow replacing an earlier lesionuq output of the same kind.
        inputs: Input files or folders; ``out`` may neither be one of them nor hold one.
        key: Digest of the settings; an earlier output with the same key is resumed
            without ``overwrite`` (run directories are always resumed).
        writes: File names (relative to ``out``) the output will write; none of them may
            be a file the folder's marker does not list (a user's own file).

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: ``out`` is a file, an input's folder, a foreign non-empty folder, an
            earlier output without ``overwrite``, another kind of output, a tampered
            marker, a user's file where the output writes, or not writable.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {sorted(KINDS)}.")
    out = Path(out)
    target = out.resolve()
    for p in inputs:
        src = Path(p).resolve()
        if _contains(target, src) or (src.is_file() and target == src.parent):
            raise InputError(
                f"{out}: is the folder of the input {p} or holds it; lesionuq never writes "
                "next to its inputs, so choose a new output folder."
            )
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a folder; choose a new output folder.")
    if not out.exists():
        parent = target.parent
        while not parent.exists():
            parent = parent.parent
        _writable_dir(parent, out)
        return out
    entries = [e for e in os.listdir(out) if not e.startswith(TMP_PREFIX) and e != LOCK_FILE]
    if entries:
        marker = read_marker(out)
        if marker is None:
            raise InputError(
                f"{out}: the folder is not empty and was not written by lesionuq, which never "
                "writes into a foreign folder; choose a new or empty folder."
            )
        if marker.kind != kind:
            raise InputError(
                f"{out}: holds a lesionuq {KINDS[marker.kind]}, not a {KINDS[kind]}; "
                "choose another output folder."
            )
        resumable = kind == "run" or (key is not None and marker.key == key)
        if not resumable and not overwrite:
            raise InputError(
                f"{out}: holds an earlier lesionuq {KINDS[kind]}; add --overwrite to replace "
                "it (only the files lesionuq wrote there are removed)."
            )
        verify_marker(out, marker)
        check_not_foreign(out, writes, marker)
    _writable_dir(target, out)
    return out


def check_not_foreign(
    folder: str | Path, names: Sequence[str], marker: OutputMarker | None = None
) -> None:
    """Refuse to write any of ``names`` in ``folder`` where a file lesionuq did not write is.

    Args:
        folder: An output folder.
        names: File names, relative to ``folder``, that an output is about to write.
        marker: The folder's marker (default: read it).

    Raises:
        InputError: One of the names is an existing file (or link, or folder) that the
            marker does not list.
    """
    folder = Path(folder)
    marker = read_marker(folder) if marker is None else marker
    listed = set(marker.files) if marker is not None else set()
    for name in names:
        if name not in listed and os.path.lexists(folder / name):
            raise InputError(
                f"{folder / name}: is not a file lesionuq wrote, and lesionuq never replaces "
                "a file of yours; move it away or choose another output folder."
            )


def remove_written(folder: str | Path) -> None:
    """Remove what lesionuq wrote in ``folder``, and its marker; other files are kept.

    The files listed in the marker are removed, and sub-folder outputs recursively.
    """
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return
    verify_marker(folder, marker)
    for d in marker.dirs:
        sub = folder / d
        if sub.is_dir() and not sub.is_symlink():
            remove_written(sub)
            with suppress(OSError):
                sub.rmdir()  # only when empty
    for f in marker.files:
        _unlink_regular(folder / f)
    (folder / MARKER).unlink(missing_ok=True)


def _unlink_regular(path: Path) -> None:
    """Remove ``path`` when it is a regular file (never a symbolic link or a folder)."""
    if path.is_file() and not path.is_symlink():
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_output_temps(folder: Path) -> None:
    """Remove ``.tmp-lesionuq-PID-*`` folders of processes that no longer run."""
    with suppress(OSError):
        for entry in folder.iterdir():
            if not entry.name.startswith(TMP_PREFIX):
                continue
            pid = entry.name[len(TMP_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def start_output(
    folder: str | Path, kind: str, key: str | None = None, dirs: Sequence[str] = ()
) -> OutputMarker:
    """Open ``folder`` (checked by :func:`check_output_dir`) for an output of ``kind``.

    An earlier output with another key (allowed by ``overwrite``) has the files lesionuq
    wrote removed first; the same key keeps them (resume). The marker is written at once,
    so an interrupted output is recognised as lesionuq's on the next start.

    Args:
        folder: The output folder.
        kind: One of :data:`KINDS`.
        key: Digest of the settings.
        dirs: Sub-folders that will be lesionuq outputs with their own marker (listed at
            once, so that an interrupted output can still be replaced).

    Returns:
        The marker now in the folder.
    """
    folder = Path(folder)
    with disk_full_guard(folder):
        folder.mkdir(parents=True, exist_ok=True)
    _stale_output_temps(folder)
    old = read_marker(folder)
    if old is not None and old.kind == kind and (kind == "run" or old.key == key):
        marker = OutputMarker(kind, key, list(old.files), list(old.dirs))
    else:
        if old is not None:
            remove_written(folder)
        marker = OutputMarker(kind, key)
    marker.dirs = sorted({*marker.dirs, *dirs})
    _write_marker(folder, marker)
    return marker


def add_written(folder: str | Path, files: Sequence[str]) -> None:
    """Record ``files`` (relative to ``folder``) as written by lesionuq in its marker."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        raise ValueError(f"{folder}: has no lesionuq marker; call start_output first.")
    marker.files = sorted({*marker.files, *files})
    _write_marker(folder, marker)


@contextmanager
def output_dir(out: str | Path, kind: str, key: str | None = None) -> Iterator[Path]:
    """Build an output in a temporary folder inside ``out`` and publish it on success.

    ``out`` must have passed :func:`check_output_dir`. On success the files lesionuq
    wrote before (listed in the old marker) and not written again are removed, each new
    file is moved into place (``os.replace``) and the marker is rewritten; other files
    in ``out`` are kept. On an exception the temporary folder is removed, and so is
    ``out`` when this call created it.

    Yields:
        The temporary folder to write into.
    """
    out = Path(out)
    created = not out.exists()
    with disk_full_guard(out if out.exists() else out.parent):
        out.mkdir(parents=True, exist_ok=True)
        _stale_output_temps(out)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=out))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        with disk_full_guard(out):
            _publish(tmp, out, kind, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with suppress(OSError):
                out.rmdir()  # only when empty
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path, kind: str, key: str | None) -> None:
    new = _files_under(tmp)
    old = read_marker(out)
    check_not_foreign(out, new, old)  # checked before the work too; files may have appeared
    if old is not None and old.kind == kind:
        for f in set(old.files) - set(new):
            _unlink_regular(out / f)
    for f in new:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / f, out / f)
    _write_marker(out, OutputMarker(kind, key, new))


# --------------------------------------------------------------------------- run lock

_HELD: dict[Path, list[int]] = {}  # folder -> [fd, depth] of locks this process holds


def clean_stale_temp(run: str | Path) -> list[Path]:
    """Remove temporary files and folders (``.tmp-*``, ``.old-*``) a killed run left.

    Call only while holding :func:`run_lock` (no other process writes the run then).

    Returns:
        The removed paths.
    """
    removed = []
    for root, dirs, files in os.walk(run):
        for name in [*dirs, *files]:
            if name.startswith((".tmp-", ".old-")):
                path = Path(root) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not d.startswith((".tmp-", ".old-"))]
    return removed


def _open_lock(path: Path) -> int:
    """Open (or create) a lock file; never through a symbolic link, never a non-file."""
    problem = None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError:
        fd, problem = -1, "cannot be opened"
    if fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        fd, problem = -1, "is not a regular file"
    if os.path.islink(path) or os.path.isdir(path):
        problem = "is a symbolic link or a folder, not lesionuq's lock file"
    if fd < 0:
        raise InputError(
            f"{path}: {problem}; lesionuq refuses to use it as its lock (remove it if it "
            "is not yours)."
        )
    return fd


@contextmanager
def run_lock(run: str | Path, clean: bool = True) -> Iterator[Path]:
    """Hold the exclusive lock of a run directory (re-entrant within one process).

    The first acquisition in a process also removes temporary files a killed run left
    (:func:`clean_stale_temp`). The OS releases the lock when the process ends, so a run
    that crashed is never locked out.

    Args:
        run: An existing run directory.
        clean: Remove the temporaries a killed run left (off for a prediction folder,
            which may hold a user's own files).

    Yields:
        The run directory.

    Raises:
        InputError: Another process holds the lock (its PID is named), or the lock
            file is a symbolic link, a folder or another non-file.
    """
    run = Path(run)
    key = run.resolve()
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield run
        finally:
            held[1] -= 1
        return
    if fcntl is None:  # pragma: no cover
        yield run
        return
    fd = _open_lock(run / LOCK_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise InputError(
            f"{run}: the run is in use by another lesionuq process (PID {owner}); wait for "
            "it to finish or choose another --out."
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        if clean:
            clean_stale_temp(run)
        yield run
    finally:
        _HELD.pop(key, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def locked_output(out: str | Path) -> Iterator[Path]:
    """Hold :func:`run_lock` on an output folder for the whole of an output's work.

    The folder is created when missing; when this call created it and the work fails,
    the lock file and the (then empty) folder are removed again, so a failed output
    leaves nothing behind. Temporaries of killed processes are removed only by their
    own names (:func:`output_dir`), never by pattern.

    Args:
        out: The output folder (checked by :func:`check_output_dir`).

    Yields:
        ``out`` as a Path.

    Raises:
        InputError: Another process writes the same folder now (its PID is named).
    """
    out = Path(out)
    created = not out.exists()
    with disk_full_guard(out if out.exists() else out.parent):
        out.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(out, clean=False):
            yield out
    except BaseException:
        if created:
            (out / LOCK_FILE).unlink(missing_ok=True)
            with suppress(OSError):
                out.rmdir()  # only when empty
        raise
