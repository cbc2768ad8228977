"""Fetching checkpoint files named by URI, into a cache, verified by sha256.

Schemes: ``hf://org/repo[@revision]/path/in/repo`` (through huggingface_hub, so ``HF_ENDPOINT``,
tokens and revision pinning work as everywhere else), ``https://`` (and ``http://`` to
localhost only), ``file://`` and plain paths (relative ones against the card's directory).
A download is written to a temp file in the cache and renamed into place once complete, so a
partial file is never taken for a finished one; a file whose sha256 differs from the card's
is deleted and reported.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from xlm.data.disk_cache import default_cache_root
from xlm.errors import InvalidValueError, PathNotFoundError, XlmUserError

ALLOWED_SCHEMES = ("hf", "https", "http", "file", "")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class DownloadError(XlmUserError, OSError):
    """A checkpoint could not be fetched."""


class UnverifiedDownloadWarning(UserWarning):
    """A remote file was fetched with no checksum to verify it."""


class ChecksumError(XlmUserError, ValueError):
    """A file's sha256 is not the one its card declares."""


@dataclass(frozen=True)
class HubLocation:
    repo_id: str
    revision: str | None
    filename: str


def parse_hf_uri(uri: str) -> HubLocation:
    """``hf://org/repo[@revision]/path`` -> its parts."""
    rest = uri[len("hf://"):]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts[:3]):
        raise InvalidValueError(f"{uri!r} is not of the form hf://org/repo[@revision]/path/to/file")
    repo, revision = parts[1], None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return HubLocation(f"{parts[0]}/{repo}", revision, "/".join(parts[2:]))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str | None, *, uri: str, card: str | None, delete: bool) -> None:
    if not expected:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        if delete:
            path.unlink(missing_ok=True)
        who = f"card {card!r}: " if card else ""
        raise ChecksumError(f"{who}{uri} has sha256 {actual}, but {expected.lower()} was expected"
                            + (f"; the file {path} was deleted" if delete else f" ({path})"))


def cache_dir() -> Path:
    return default_cache_root() / "downloads"


def _fetch_https(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.part-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise DownloadError(f"{url}: got {out.tell()} of {total} bytes")
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: {err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fetch_hf(location: HubLocation) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(location.repo_id, location.filename, revision=location.revision,
                               cache_dir=cache_dir() / "hf", endpoint=os.environ.get("HF_ENDPOINT"))
    except Exception as err:
        raise DownloadError(f"cannot download {location.filename} from the hub repo {location.repo_id}"
                            f"{'@' + location.revision if location.revision else ''}: {err}") from err
    return Path(path)


def sibling_uri(uri: str, filename: str) -> str:
    """The URI of `filename` in the same remote directory as `uri`."""
    return f"{uri.rsplit('/', 1)[0]}/{filename}" if "/" in uri else filename


def fetch(uri: str, *, sha256: str | None = None, base_dir: Path | None = None, card: str | None = None) -> Path:
    """A local path holding the file `uri` names, downloaded into the cache when remote."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme if len(parsed.scheme) > 1 else ""  # "C:" is a drive, not a scheme
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidValueError(f"{'card ' + repr(card) + ': ' if card else ''}checkpoint URI {uri!r} has scheme "
                                f"{scheme!r}; allowed: hf://, https://, file:// or a path")
    if scheme == "http" and parsed.hostname not in _LOCAL_HOSTS:
        raise InvalidValueError(f"checkpoint URI {uri!r}: plain http is only allowed to localhost; use https://")
    if scheme in ("file", ""):
        path = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else uri).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = (base_dir / path).resolve()
            if not path.is_relative_to(base_dir.resolve()):
                raise InvalidValueError(f"{'card ' + repr(card) + ': ' if card else ''}the relative path {uri!r} "
                                        f"leaves the card's directory {base_dir}; write an absolute path or file:// "
                                        f"URI to point outside it")
        if not path.exists():
            raise PathNotFoundError(f"{'card ' + repr(card) + ': ' if card else ''}checkpoint {uri!r} "
                                    f"not found (looked at {path})")
        if path.is_file():
            verify_sha256(path, sha256, uri=uri, card=card, delete=False)
        return path
    if not sha256:
        warnings.warn(f"{'card ' + repr(card) + ': ' if card else ''}{uri} is downloaded without a sha256 to check "
                      f"it against; add `sha256:` to the card to make it verifiable", UnverifiedDownloadWarning,
                      stacklevel=2)
    if scheme == "hf":
        path = _fetch_hf(parse_hf_uri(uri))
        verify_sha256(path, sha256, uri=uri, card=card, delete=True)
        return path
    # keyed by the URI's directory, so files that sit side by side remotely do so in the cache too
    key = hashlib.sha256(uri.rsplit("/", 1)[0].encode()).hexdigest()[:16]
    dest = cache_dir() / "url" / key / (Path(parsed.path).name or "download")
    if dest.exists():
        try:
            verify_sha256(dest, sha256, uri=uri, card=card, delete=True)
            return dest
        except ChecksumError:
            pass  # a corrupted cache entry: fetch it again
    _fetch_https(uri, dest)
    verify_sha256(dest, sha256, uri=uri, card=card, delete=True)
    return dest
