"""Checksummed downloads into a local cache, and finding dataset files that are already there.

A checksum is written ``"sha256:<hex>"`` or ``"md5:<hex>"``; a bare 64-hex-digit string is taken as
sha256. sha256 is what the bundled datasets use; md5 is accepted because some datasets only
publish md5 sums. A file is accepted when it matches *any* of the checksums listed for it (one
dataset can have several known-good byte-level encodings, e.g. re-gzipped distro copies).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from robustlab.errors import DatasetError

_CHUNK = 1 << 20
_ALGORITHMS = ("sha256", "md5")


def cache_dir() -> Path:
    """Where downloads go by default: ``$ROBUSTLAB_DATA`` or ``~/.cache/robustlab``."""
    env = os.environ.get("ROBUSTLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustlab"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, "sha256")


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:<hex>"``/``"md5:<hex>"``/bare sha256 hex -> ``(algorithm, lowercase hex)``."""
    algo, sep, digest = checksum.partition(":")
    if not sep:
        algo, digest = "sha256", checksum
    algo, digest = algo.strip().lower(), digest.strip().lower()
    sizes = {"sha256": 64, "md5": 32}
    if algo not in sizes:
        raise ValueError(f"unsupported checksum algorithm {algo!r} (use one of {_ALGORITHMS})")
    if len(digest) != sizes[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"malformed {algo} checksum {checksum!r}")
    return algo, digest


def matches(path: str | os.PathLike, checksums: str | tuple[str, ...] | list[str]) -> bool:
    """Whether the file matches any of ``checksums``."""
    wanted = [parse_checksum(c) for c in ([checksums] if isinstance(checksums, str) else checksums)]
    digests: dict[str, str] = {}
    for algo, digest in wanted:
        if algo not in digests:
            digests[algo] = file_digest(path, algo)
        if digests[algo] == digest:
            return True
    return False


def verify(path: str | os.PathLike, checksums: str | tuple[str, ...] | list[str]) -> None:
    """Raise :class:`DatasetError` unless the file matches one of ``checksums``."""
    if not matches(path, checksums):
        listed = [checksums] if isinstance(checksums, str) else list(checksums)
        raise DatasetError(f"checksum mismatch for {os.fspath(path)}: sha256 is {sha256_file(path)}, expected "
                           f"{' or '.join(listed)}. The file is corrupt or not the expected one; delete it "
                           "and load again with download=true (config key data.download; eval --download) to re-fetch "
                           "it")


def download(url: str, dest_path: str | os.PathLike, sha256: str | None = None, *, md5: str | None = None) -> Path:
    """Fetch ``url`` to ``dest_path``, verifying ``sha256`` (or, only where none is published, ``md5``).

    Streams to a temporary file beside ``dest_path`` and moves it into place atomically only after
    the checksum matched; on any failure the temporary file is removed and :class:`DatasetError` raised.
    """
    checksums = [f"sha256:{sha256}"] if sha256 else []
    if md5:
        checksums.append(f"md5:{md5}")
    if not checksums:
        raise ValueError("download() needs a sha256 (or md5) checksum to verify against")
    wanted = [parse_checksum(c) for c in checksums]
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    hashers = {algo: hashlib.new(algo) for algo, _ in wanted}
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=60) as resp:
                total = resp.headers.get("Content-Length")
                with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                          desc=dest.name, disable=None, leave=False) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        bar.update(len(chunk))
        got = {algo: h.hexdigest() for algo, h in hashers.items()}
        if not any(got[algo] == digest for algo, digest in wanted):
            raise DatasetError(f"checksum mismatch downloading {url}: got "
                               f"{', '.join(f'{a}:{d}' for a, d in got.items())}, expected {' or '.join(checksums)}")
        os.replace(tmp_name, dest)
    except DatasetError:
        _remove(tmp_name)
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        _remove(tmp_name)
        raise DatasetError(f"download of {url} to {dest} failed: {e}") from e
    except BaseException:
        _remove(tmp_name)
        raise
    return dest


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class RemoteFile:
    """One dataset file: its name on disk, where to download it, and its accepted checksums.

    ``checksums`` holds ``"sha256:<hex>"``/``"md5:<hex>"`` strings; the first one is the canonical
    file at ``url`` and is what a download is verified against. Empty means "do not verify" (tests only).
    """

    name: str
    url: str = ""
    checksums: tuple[str, ...] = field(default_factory=tuple)


def fetch(files: list[RemoteFile] | tuple[RemoteFile, ...], root: str | os.PathLike, download: bool = False) -> list[Path]:
    """Paths of ``files`` in directory ``root``, verified; missing ones are downloaded only if ``download``.

    Raises :class:`DatasetError` when a file is missing and ``download`` is false (naming the file and
    where it looked), or when a present/downloaded file fails its checksum.
    """
    root = Path(root).expanduser()
    paths = []
    for spec in files:
        path = root / spec.name
        if not path.exists():
            if not download:
                raise DatasetError(f"dataset file {spec.name} is missing: looked for {path}. Pass download=true "
                                   f"(config key data.download; eval --download) to fetch it"
                                   + (f" from {spec.url}" if spec.url else "") + ", or put the file there yourself")
            if not spec.url:
                raise DatasetError(f"dataset file {spec.name} is missing from {root} and has no download URL")
            if not spec.checksums:
                raise DatasetError(f"refusing to download {spec.url} without a checksum to verify")
            algo, digest = parse_checksum(spec.checksums[0])
            _download(spec.url, path, **{algo: digest})
        elif spec.checksums:
            verify(path, spec.checksums)
        paths.append(path)
    return paths


_download = download  # ``fetch`` has a parameter named ``download``
