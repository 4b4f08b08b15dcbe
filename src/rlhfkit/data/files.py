"""Files on the command line: where a data argument points (a local file or a `datasets` name), reading text
with `file:line` errors, and writing outputs whole or not at all.

Every bad path fails at once with one line naming it: a missing file is never taken for a Hugging Face name (a
lookup that would reach the network, and retry there), a directory is not read as a file, bytes that are not
UTF-8 are reported at their line and column. Outputs are checked before any work (a parent that is a file, an
unwritable folder) and written to a temporary file renamed into place, so a failure (a full disk) leaves no
half-written file, and the error names the output, not the temporary file.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from rlhfkit.errors import DataError, RlhfkitError

T = TypeVar("T")

DATA_SUFFIXES = frozenset({".jsonl", ".json", ".ndjson", ".txt", ".csv", ".tsv", ".parquet", ".arrow", ".gz",
                           ".bz2", ".xz", ".zst", ".zip", ".tar", ".yaml", ".yml"})
"""Suffixes that mark a file name: `nope.txt` is a missing file, never a `datasets` name."""

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
"""What a Hugging Face name can look like: `name` or `owner/name` (letters, digits, `-`, `_`, `.`)."""


# ----------------------------------------------------------------------------------------------- sources
def looks_like_path(name: str) -> bool:
    """Whether `name` can only be a local path, whether or not it exists.

    A Hugging Face name is `name` or `owner/name` (a data source may add `:split`). Anything else is a path:
    `./x`, `../x`, `/x`, `~/x`, `a/b/c`, a backslash or a space; so is a name with a file suffix (`nope.txt`,
    `data/x.jsonl`), and `a/b` when `a` is a local directory (a relative path into it, not an owner's repo).
    """
    base = name.partition(":")[0]
    if not HUB_NAME.fullmatch(base):
        return True
    if Path(base).suffix.lower() in DATA_SUFFIXES:
        return True
    first, slash, _ = base.partition("/")
    return bool(slash) and Path(first).is_dir()


def resolve_source(source: str | os.PathLike) -> Path | str:
    """Where a data argument points: the local file (a Path), or a `datasets` name (the string as given).

    Anything that exists locally is local; a directory is refused (DataError "is a directory"), and so is a
    path-looking name that does not exist (DataError "file not found", see `looks_like_path`). Only a bare
    `name` or `owner/name` (optionally `:split`) that is no local path is left to `datasets`.
    """
    text = str(source)
    if not text.strip():
        raise RlhfkitError("a data file argument is empty")
    path = Path(text).expanduser()
    if path.is_dir():
        raise DataError(text, None, "is a directory, not a data file")
    if path.exists():
        return path
    if looks_like_path(text):
        raise DataError(text, None, "file not found")
    return text


def local_file(source: str | os.PathLike) -> Path:
    """`source` as an existing local file; DataError when it is missing or a directory (no `datasets` names)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        raise DataError(text, None, "is a directory, not a file")
    if not path.exists():
        raise DataError(text, None, "file not found")
    return path


# ----------------------------------------------------------------------------------------------- reading
def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """A local file's bytes; a `.gz` file (HH-RLHF and OpenAssistant ship their JSONL gzipped) decompressed."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def open_text(path: str | os.PathLike) -> IO[str]:
    """A local UTF-8 text file for reading (`.gz` decompressed); a byte-order mark at the start is read away
    (Windows editors write one)."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig")


def utf8_error(path: str | os.PathLike) -> DataError:
    """The first bytes of `path` that are not UTF-8, as a DataError at their line and column. Found by a second,
    binary pass, since a text-mode reader decodes blocks and cannot tell the line. A gzip file read as text (one
    whose name does not end in `.gz`) is named as such."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b" and not str(path).endswith(".gz"):
            return DataError(str(path), None, "is gzip-compressed: name it *.gz or decompress it")
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                column = len(raw[: err.start].decode("utf-8")) + 1
                return DataError(str(path), lineno, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                                                    f"{column}); save the file as UTF-8")
    return DataError(str(path), None, "not valid UTF-8; save the file as UTF-8")


def read_text(path: str | os.PathLike) -> str:
    """A whole local text file, UTF-8 (a byte-order mark at the start is read away); DataError naming the file
    when it is missing or a directory, and its line and column when it is not UTF-8."""
    try:
        return local_file(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise utf8_error(Path(path).expanduser()) from None


# ----------------------------------------------------------------------------------------------- writing
def ensure_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, with one line naming the file in the way when a component of `path` is a file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise RlhfkitError(f"cannot create directory {path}: {blocker} is a file") from None
    return path


def check_output(path: str | os.PathLike, directory: bool = False) -> None:
    """Refuse, before any work, an output (a file, or a directory with directory=True) that cannot be written: a
    directory in a file's place or a file in a directory's, a parent that is a file, an ancestor the user may not
    write in. Read-only: nothing is created."""
    path = Path(path)
    if path.exists():
        if path.is_dir() != directory:
            raise RlhfkitError(f"{path}: is {'a file' if directory else 'a directory'}; expected an output "
                               f"{'directory' if directory else 'file'}")
        writable = path if directory else path.parent  # a file is replaced by a new one made beside it
    else:
        writable = next(p for p in path.parents if p.exists())  # the last parent, "." or "/", always exists
        if not writable.is_dir():
            raise RlhfkitError(f"cannot write {path}: {writable} is a file")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise RlhfkitError(f"cannot write {path}: {writable} is not writable")


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside `path`, opened for writing: (fd, its path). Created with mode 0666
    minus the umask, as `open(path, "w")` would (tempfile.mkstemp makes 0600 files, private to the owner)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {path}")


def naming(err: OSError, path: str | os.PathLike) -> OSError:
    """The same error about `path`: the user named the output, not its temporary file."""
    return type(err)(err.errno, err.strerror or str(err), str(path))


def write_atomic(path: str | os.PathLike, write: Callable[[IO[str]], T]) -> T:
    """Call write(f) on a UTF-8 text file that replaces `path` only once complete (temporary file + rename);
    returns what write returns. On any failure the temporary file is removed and `path` is as it was; an
    OSError (a full disk, no permission) names `path`."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = _create_temp(path)
    except OSError as err:
        raise naming(err, path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            result = write(f)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise naming(err, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (see `write_atomic`)."""
    write_atomic(path, lambda f: f.write(text))
    return Path(path)
