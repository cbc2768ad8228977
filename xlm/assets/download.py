"""Fetching checkpoint files named by URI, into a cache, verified by sha256.

Schemes: ``hf://org/repo[@revision]/path/in/repo`` (through huggingface_hub, so ``HF_ENDPOINT``,
tokens and revision pinning work as everywhere else), ``https://`` (and ``http://`` to
localhost only), ``file://`` and plain paths (relative ones against the card's directory).
A download is written to a temp file in the cache and renamed into place once complete, so a
partial file is never taken for a finished one; a file whose sha256 differs from the card's
is deleted and reported.

With ``HF_HUB_OFFLINE`` set, or when one request to the hub gets no answer at all, a hub file comes
from the cache or fails at once with one line saying how to fetch it beforehand: huggingface_hub
would otherwise retry for about half a minute before saying the same thing less plainly.
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
from xlm.errors import InvalidValueError, PathNotFoundError, XlmUserError, XlmWarning

ALLOWED_SCHEMES = ("hf", "https", "http", "file", "")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class DownloadError(XlmUserError, OSError):
    """A checkpoint could not be fetched."""


class UnverifiedDownloadWarning(XlmWarning):
    """A remote file was fetched with no checksum to verify it."""


class ChecksumError(XlmUserError, ValueError):
    """A file's sha256 is not the one its card declares."""


@dataclass(frozen=True)
class HubLocation:
    repo_id: str
    revision: str | None
    filename: str

    @property
    def uri(self) -> str:
        return f"hf://{self.repo_id}{'@' + self.revision if self.revision else ''}/{self.filename}"


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


def hub_cache_dir() -> Path:
    """huggingface_hub's cache layout (repos, snapshots by commit), under xlm's cache."""
    return cache_dir() / "hf"


def _url_cache_path(uri: str) -> Path:
    """Keyed by the URI's directory, so files that sit side by side remotely do so in the cache too."""
    key = hashlib.sha256(uri.rsplit("/", 1)[0].encode()).hexdigest()[:16]
    return cache_dir() / "url" / key / (Path(urllib.parse.urlparse(uri).path).name or "download")


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


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub reads it once, when imported."""
    from huggingface_hub import constants

    now = (os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(now)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _hub_unreachable(location: HubLocation, endpoint: str | None) -> str | None:
    """Why the hub cannot be reached, from one request without retries; None when it answers, whatever it says
    (hf_hub_download then reports a missing file or a refused token itself)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    url = hf_hub_url(location.repo_id, location.filename, revision=location.revision, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, endpoint=endpoint)
    except HfHubHTTPError:
        return None
    except Exception as err:  # the transport's own errors differ between huggingface_hub versions
        return f"the hub at {endpoint or constants.ENDPOINT} cannot be reached ({type(err).__name__}: {_one_line(err)})"
    return None


def _not_cached(location: HubLocation, why: str, card: str | None) -> str:
    revision = f" --revision {location.revision}" if location.revision else ""
    command = f"`hf download {location.repo_id} {location.filename}{revision} --cache-dir {hub_cache_dir()}`"
    if card:
        command = f"`xlm cards download {card}` (or {command})"
    return (f"{location.uri}: {why}, and {location.filename} is not in the download cache {hub_cache_dir()}; "
            f"on a machine that reaches the hub, run {command}, then copy its cache here "
            f"(XLM_CACHE_DIR names the cache's root, here {default_cache_root()})")


def _fetch_hf(location: HubLocation, *, card: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT")
    why_offline = "HF_HUB_OFFLINE is set" if hub_offline() else _hub_unreachable(location, endpoint)
    try:
        path = hf_hub_download(location.repo_id, location.filename, revision=location.revision,
                               cache_dir=hub_cache_dir(), endpoint=endpoint, local_files_only=why_offline is not None)
    except Exception as err:
        if why_offline is not None and isinstance(err, LocalEntryNotFoundError):
            raise DownloadError(_not_cached(location, why_offline, card)) from None
        raise DownloadError(f"cannot download {location.uri}: {_one_line(err)}") from err
    return Path(path)


def sibling_uri(uri: str, filename: str) -> str:
    """The URI of `filename` in the same remote directory as `uri`."""
    return f"{uri.rsplit('/', 1)[0]}/{filename}" if "/" in uri else filename


def _scheme(uri: str, card: str | None) -> str:
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme if len(parsed.scheme) > 1 else ""  # "C:" is a drive, not a scheme
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidValueError(f"{'card ' + repr(card) + ': ' if card else ''}checkpoint URI {uri!r} has scheme "
                                f"{scheme!r}; allowed: hf://, https://, file:// or a path")
    if scheme == "http" and parsed.hostname not in _LOCAL_HOSTS:
        raise InvalidValueError(f"checkpoint URI {uri!r}: plain http is only allowed to localhost; use https://")
    return scheme


def _local_path(uri: str, scheme: str, base_dir: Path | None, card: str | None) -> Path:
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path) if scheme == "file" else uri).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = (base_dir / path).resolve()
        if not path.is_relative_to(base_dir.resolve()):
            raise InvalidValueError(f"{'card ' + repr(card) + ': ' if card else ''}the relative path {uri!r} "
                                    f"leaves the card's directory {base_dir}; write an absolute path or file:// "
                                    f"URI to point outside it")
    return path


def cached_path(uri: str, *, base_dir: Path | None = None, card: str | None = None) -> Path | None:
    """Where the file `uri` names is on local disk, asking no network: a local path, or the download cache's
    copy (for an `hf://` URI without a revision, the one `main` last pointed to); None when it is not there."""
    scheme = _scheme(uri, card)
    if scheme == "hf":
        from huggingface_hub import try_to_load_from_cache

        location = parse_hf_uri(uri)
        found = try_to_load_from_cache(location.repo_id, location.filename, cache_dir=hub_cache_dir(),
                                       revision=location.revision)
        return Path(found) if isinstance(found, str) else None
    path = _local_path(uri, scheme, base_dir, card) if scheme in ("file", "") else _url_cache_path(uri)
    return path if path.exists() else None


def _usable_cache_entry(path: Path, sha256: str | None, *, uri: str, card: str | None) -> bool:
    """Whether a URL's cached copy is there and matches its pin (a corrupted one is deleted, to be fetched again)."""
    if not path.exists():
        return False
    try:
        verify_sha256(path, sha256, uri=uri, card=card, delete=True)
    except ChecksumError:
        return False
    return True


def fetch(uri: str, *, sha256: str | None = None, base_dir: Path | None = None, card: str | None = None,
          unpinned_note: str = "") -> Path:
    """A local path holding the file `uri` names, downloaded into the cache when remote; a remote file without a
    sha256 is fetched with a warning (`unpinned_note` says what it decides)."""
    scheme = _scheme(uri, card)
    if scheme in ("file", ""):
        path = _local_path(uri, scheme, base_dir, card)
        if not path.exists():
            raise PathNotFoundError(f"{'card ' + repr(card) + ': ' if card else ''}checkpoint {uri!r} "
                                    f"not found (looked at {path})")
        if path.is_file():
            verify_sha256(path, sha256, uri=uri, card=card, delete=False)
        elif sha256:
            how = f" (`xlm cards pin {card} --force` writes the manifest of the files there now)" if card else ""
            raise ChecksumError(f"{'card ' + repr(card) + ': ' if card else ''}{uri} is a directory ({path}), which "
                                f"one sha256 cannot pin: pin each file in it under the card's `manifest:`{how}")
        return path
    if scheme == "hf":
        path = _fetch_hf(parse_hf_uri(uri), card=card)
        verify_sha256(path, sha256, uri=uri, card=card, delete=True)
    else:
        path = _url_cache_path(uri)
        if not _usable_cache_entry(path, sha256, uri=uri, card=card):
            _fetch_https(uri, path)
            verify_sha256(path, sha256, uri=uri, card=card, delete=True)
    if not sha256:
        how = (f"pin it in the card's `sha256:` mapping ({path.name}: <its sha256>; `xlm cards pin {card}` writes the "
               f"hashes of the files it fetched)" if card else "pass its sha256 to verify it")
        warnings.warn(f"{'card ' + repr(card) + ': ' if card else ''}{uri} was downloaded without a sha256 to check "
                      f"it against{unpinned_note}; {how}", UnverifiedDownloadWarning, stacklevel=2)
    return path
