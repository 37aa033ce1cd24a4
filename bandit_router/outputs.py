"""Where a command writes what it made (`--out`): nothing is created before there is something to write, and what a
failed write created is removed again, never a folder or a file that was there before.

    out_problem(folder)     why `folder` could not be created or written (checked first, creating nothing)
    file_problem(path)      the same for one file (`export --out log.dsjson`)
    writing(folder)         create it (and missing parents) for a block of writes; on failure remove what it made
    writing_file(path)      the same for one file
    put_file(finished, path) a file written elsewhere (a staging folder) put at `path` as `writing_file` writes it
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def out_problem(folder: Path) -> str | None:
    """Why `folder` could not be created or written to (a short phrase), or None when it could. Creates nothing:
    a command checks this before its work, and creates the folder only when it writes."""
    try:
        return _folder_problem(folder)
    except OSError as exc:  # a folder on the way this process may not search (EACCES), a name too long, …
        return f"cannot create the folder: {exc.strerror or exc}"


def _folder_problem(folder: Path) -> str | None:
    if folder.is_dir():
        return None if os.access(folder, os.W_OK | os.X_OK) else "the folder is not writable"
    if folder.exists() or folder.is_symlink():
        return f"cannot create the folder: {os.strerror(errno.EEXIST)}"
    ancestor = next(p for p in folder.absolute().parents if p.exists())  # the root exists
    if not ancestor.is_dir():
        return f"cannot create the folder: {os.strerror(errno.ENOTDIR)}"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create the folder: {os.strerror(errno.EACCES)}"
    return None


def file_problem(path: Path) -> str | None:
    """Why the file `path` could not be written (a short phrase), or None when it could. Creates nothing."""
    try:
        if path.is_dir():
            return f"cannot write the file: {os.strerror(errno.EISDIR)}"
        if path.exists():
            return None if os.access(path, os.W_OK) else "the file is not writable"
    except OSError as exc:
        return f"cannot write the file: {exc.strerror or exc}"
    return out_problem(path.parent)


@contextmanager
def writing(folder: Path) -> Iterator[Path]:
    """Create `folder` (and its missing parents) for the block's writes. When the block fails, remove the folders
    created here, with everything in them (all of it written by the block). A folder that was there is left as
    it is: its entries cannot be told from another program's."""
    missing: list[Path] = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    created: Path | None = None  # the top-most folder this call made (not one another program made meanwhile)
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
            continue
        if created is None:
            created = path
    try:
        yield folder
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


@contextmanager
def writing_file(path: Path) -> Iterator[TextIO]:
    """`path` opened for writing text, its missing folders created; when the block fails, the file is removed if
    it was not there before, and the folders made for it too. A regular file that was there is replaced only when
    the block succeeds (written beside it, then renamed over it, keeping its permissions): a failure leaves it as it
    was. Anything else that was there (a symlink, `/dev/stdout`) is written through, as before."""
    existed = os.path.lexists(path)  # a symlink, even a dangling one, is the user's
    with writing(path.parent):
        if existed and path.is_file() and not path.is_symlink():
            with _replacing(path) as fp:
                yield fp
            return
        if not existed:
            try:
                fp = path.open("x", encoding="utf-8")  # ours only if this call made it
            except FileExistsError:
                existed = True
        if existed:
            fp = path.open("w", encoding="utf-8")
        try:
            with fp:
                yield fp
        except BaseException:
            if not existed:
                path.unlink(missing_ok=True)
            raise


@contextmanager
def _replacing(path: Path) -> Iterator[TextIO]:
    """A new file beside the regular file `path`, renamed over it when the block succeeds, removed when it fails."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    partial = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            yield fp
        _rename_over(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _rename_over(new: Path, path: Path) -> None:
    """Rename `new` to `path`, with the permissions of the regular file `path` when there is one (a 0600 file
    stays 0600)."""
    if path.is_file() and not path.is_symlink():
        shutil.copymode(path, new)
    os.replace(new, path)


def put_file(finished: Path, path: Path) -> None:
    """Put the finished file `finished` at `path` as `writing_file` writes one: renamed over a regular file (keeping
    its permissions) or to a new name; anything else that was there (a symlink, even a dangling one) is written
    through, and `finished` removed."""
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        shutil.copyfile(finished, path)
        finished.unlink()
        return
    _rename_over(finished, path)
