"""Version folders as archives: a .tar.gz streamed out of a folder, and archives (.tar.gz, .tgz, .tar, .zip)
unpacked into one, refusing every member that could land anywhere else.

An archive comes from a user: a member that is a link (symbolic or hard), a device or a fifo, an absolute name,
a `..` component, a name given twice, a pickle checkpoint, or one too many (members or bytes) is refused with a
422 naming it — never skipped, so what is registered is exactly what was sent. Only regular files and folders are
ever created, each at a path built from checked components inside the target folder.
"""

from __future__ import annotations

import os
import queue
import re
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

import anyio

from core.errors import PayloadTooLarge, ValidationFailed

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Files that unpickle (or may) when loaded: never accepted, whatever they are called in a folder.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
MAX_DEPTH = 16
MAX_PART_CHARS = 255
COPY_CHUNK = 1024 * 1024
STREAM_CHUNK = 256 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def archive_format(file_name: str) -> str:
    """`tar` (gzip-compressed or not: tarfile tells) or `zip`, from the upload's file name."""
    lower = file_name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    raise ValidationFailed(f"'{file_name[:200]}' is not an archive ftserve imports: send a "
                           f"{', '.join(ARCHIVE_SUFFIXES)} file")


def _shown(name: str) -> str:
    return repr(name[:200])


def member_path(name: str, *, is_dir: bool = False) -> PurePosixPath | None:
    """The checked relative path of a member (None for the archive's own root folder, `./`)."""
    if "\x00" in name or "\\" in name:
        raise ValidationFailed(f"archive member {_shown(name)} has a backslash or NUL in its name; refused")
    if name.startswith("/") or _DRIVE.match(name):
        raise ValidationFailed(f"archive member {_shown(name)} has an absolute path; members must be relative")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValidationFailed(f"archive member {_shown(name)} escapes the archive ('..' in its path); refused")
    if not parts:
        if is_dir:
            return None
        raise ValidationFailed(f"archive member {_shown(name)} has no name")
    if len(parts) > MAX_DEPTH or any(len(p) > MAX_PART_CHARS for p in parts):
        raise ValidationFailed(f"archive member {_shown(name)}: paths are at most {MAX_DEPTH} folders deep, "
                               f"{MAX_PART_CHARS} characters a name")
    if not is_dir and parts[-1].lower().endswith(PICKLE_SUFFIXES):
        raise ValidationFailed(
            f"archive member {_shown(name)} is a pickle checkpoint ({PurePosixPath(parts[-1]).suffix}); only "
            "safetensors weights are accepted (save with save_pretrained(..., safe_serialization=True)) and "
            "no pickle file is ever loaded")
    return PurePosixPath(*parts)


class _Unpacker:
    """Counts members and bytes against the caps and writes regular files and folders only."""

    def __init__(self, into: Path, *, max_members: int, max_bytes: int) -> None:
        self.into = into
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.members = 0
        self.bytes = 0

    def count(self, members: int = 1) -> None:
        self.members += members
        if self.members > self.max_members:
            raise ValidationFailed(f"the archive has more than {self.max_members} members "
                                   "(FTSERVE_MAX_IMPORT_MEMBERS)")

    def member(self, name: str, *, refused: str | None, is_dir: bool, open_: Callable[[], IO[bytes] | None]
               ) -> None:
        """One member: refused (`refused` says why), a folder, or a regular file read from `open_()`."""
        if refused is not None:
            raise ValidationFailed(f"archive member {_shown(name)} is {refused}; links, devices, fifos and "
                                   "encrypted members are refused")
        rel = member_path(name, is_dir=is_dir)
        if rel is None:
            return
        if is_dir:
            self._mkdir(self.into.joinpath(*rel.parts), rel)
            return
        source = open_()
        assert source is not None  # a regular file always has contents
        with source:
            self.file(rel, source)

    def _mkdir(self, path: Path, rel: PurePosixPath) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ValidationFailed(f"archive member '{rel}' clashes with a file of the same name") from exc

    def file(self, rel: PurePosixPath, source: IO[bytes]) -> None:
        target = self.into.joinpath(*rel.parts)
        self._mkdir(target.parent, rel.parent)
        try:
            out = target.open("xb")
        except FileExistsError as exc:
            raise ValidationFailed(f"archive member '{rel}' appears twice (or clashes with a folder)") from exc
        except IsADirectoryError as exc:
            raise ValidationFailed(f"archive member '{rel}' clashes with a folder of the same name") from exc
        with out:
            while chunk := source.read(COPY_CHUNK):
                self.bytes += len(chunk)
                if self.bytes > self.max_bytes:
                    raise PayloadTooLarge(f"the archive unpacks to more than {self.max_bytes} bytes "
                                          "(FTSERVE_MAX_IMPORT_BYTES)")
                out.write(chunk)


def _tar_kind(info: tarfile.TarInfo) -> str | None:
    """Why a tar member is refused, or None for a regular file or folder."""
    if info.issym():
        return "a symbolic link"
    if info.islnk():
        return "a hard link"
    if info.ischr() or info.isblk():
        return "a device"
    if info.isfifo():
        return "a fifo"
    if info.isreg() or info.isdir():
        return None
    return "not a regular file or folder"


def _unpack_tar(archive: Path, unpacker: _Unpacker) -> None:
    try:
        # Stream mode: one pass, in order, nothing read twice; tarfile detects gzip (or none) itself.
        with tarfile.open(archive, mode="r|*") as tar:
            for info in tar:
                unpacker.count()
                unpacker.member(info.name, refused=_tar_kind(info), is_dir=info.isdir(),
                                open_=partial(tar.extractfile, info))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a disk error of ours (gzip's errors about the data carry no errno)
        raise ValidationFailed(f"the archive is not a readable tar file ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from exc


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "a device or fifo"
    if info.flag_bits & 0x1:
        return "encrypted"
    return None


def _unpack_zip(archive: Path, unpacker: _Unpacker) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            unpacker.count(len(infos))  # the central directory lists them all up front
            for info in infos:
                # Sizes are counted as it inflates, never read from its header.
                unpacker.member(info.filename, refused=_zip_kind(info), is_dir=info.is_dir(),
                                open_=partial(zf.open, info))
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as exc:
        raise ValidationFailed(f"the archive is not a readable zip file ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from exc


def unpack(archive: Path, fmt: str, *, into: Path, max_members: int, max_bytes: int) -> Path:
    """Unpack into the (new) folder `into` and return the model folder: `into` itself, or the one folder that
    holds every member."""
    into.mkdir(parents=True)
    unpacker = _Unpacker(into, max_members=max_members, max_bytes=max_bytes)
    (_unpack_zip if fmt == "zip" else _unpack_tar)(archive, unpacker)
    top = list(into.iterdir())
    if not top:
        raise ValidationFailed("the archive is empty")
    return top[0] if len(top) == 1 and top[0].is_dir() else into


def _files(folder: Path) -> Iterator[Path]:
    """Regular files under `folder`, sorted, never following a link."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if stat.S_ISREG(path.lstat().st_mode):
                yield path


class _Stopped(Exception):
    """The reader of an archive stream went away."""


class _QueueWriter:
    """A file-like sink for tarfile: bytes go to a bounded queue in chunks, so at most a few chunks of the
    archive are ever in memory; writing blocks while the reader is behind, and stops once it left."""

    def __init__(self, out: queue.Queue[Any], stop: threading.Event) -> None:
        self.out, self.stop = out, stop
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= STREAM_CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            chunk, self.buffer = bytes(self.buffer), bytearray()
            self.put(chunk)

    def put(self, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.out.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


_END = object()


def _write_tar(folder: Path, arcroot: str, sink: _QueueWriter) -> None:
    try:
        with tarfile.open(fileobj=sink, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for path in _files(folder):
                info = tar.gettarinfo(str(path), arcname=f"{arcroot}/{path.relative_to(folder).as_posix()}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)
        sink.flush()
        sink.put(_END)
    except _Stopped:
        return
    except BaseException as exc:  # handed to the reader, which raises it where the response is written
        try:
            sink.put(exc)
        except _Stopped:
            return


async def stream_tar_gz(folder: Path, *, arcroot: str) -> AsyncIterator[bytes]:
    """The folder as a .tar.gz whose members are under `arcroot/`, produced by a thread as it is read."""
    chunks: queue.Queue[Any] = queue.Queue(maxsize=8)
    stop = threading.Event()
    thread = threading.Thread(target=_write_tar, args=(folder, arcroot, _QueueWriter(chunks, stop)),
                              name=f"archive-{arcroot}", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = await anyio.to_thread.run_sync(chunks.get, True, 1.0)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # a reader that left (or failed) stops the writer at its next chunk
