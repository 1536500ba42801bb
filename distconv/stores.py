"""Where arrays are stored: local paths and fsspec URLs (``s3://``, ``gs://``...), one interface.

A :class:`Location` names a store on a local disk or behind an fsspec URL and answers what
output safety needs (exists? a Zarr store? which keys? remove it) the same way for both. Object
stores are reached through zarr's ``FsspecStore``; the pickled store travels with each task, so
workers read and write the object store themselves.

Secrets (storage options such as ``secret=``, a URL's password, the cloud SDKs' credential
environment variables) never leave this process in text: :func:`redact` blanks them in every
message and recorded command line, and provenance records only :func:`public_options`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from distconv.errors import DistconvError

__all__ = [
    "Location",
    "bucket_missing",
    "is_url",
    "parse_storage_options",
    "public_options",
    "quiet_abandoned_store_reads",
    "redact",
    "remember_secret",
    "remote_error",
    "storage_failure",
]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_ZARR_CODE = f"{os.sep}zarr{os.sep}"  # in the file names of zarr's own coroutines

# Option names whose values are credentials: s3fs's key/secret/token, gcsfs's token, adlfs's
# account_key/sas_token/connection_string, any *password*.
_SECRET_NAME = re.compile(r"secret|token|password|passwd|key|credential|sas|signature|auth", re.I)
_PUBLIC_NAMES = {"endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "profile"}

# Credentials the cloud SDKs read from the environment: blanked if they ever reach a message.
_SECRET_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)
_SECRETS: set[str] = set()

# Query parameters of presigned/SAS URLs that are credentials.
_SECRET_QUERY = re.compile(
    r"((?:X-Amz-(?:Signature|Credential|Security-Token)|sig|signature|token)=)[^&\s]+", re.I
)
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@")

# Storage options given for a URL, found again when a store under it is reopened by URL alone
# (a level of an image, matmul's in-task panels).
_OPTIONS: dict[str, dict[str, Any]] = {}


class _UnclosedSessionFilter(logging.Filter):
    """Drop aiohttp's "Unclosed client session/connector" reports at interpreter exit.

    s3fs and gcsfs sessions live on zarr's event loop, which stops before they are collected at
    exit; every worker process would print two lines of noise after a correct job.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Unclosed client session", "Unclosed connector"))


logging.getLogger("asyncio").addFilter(_UnclosedSessionFilter())


def quiet_abandoned_store_reads() -> Callable[[], None]:
    """Drop the "Exception ignored in <coroutine StorePath.get>" reports of a failed store.

    When one of zarr's concurrent metadata reads fails (an unreachable endpoint), the others are
    abandoned; collected later, each prints a traceback through ``sys.unraisablehook``, after
    the one-line error. Other unraisable exceptions still reach the previous hook.

    Returns a function that takes both back out (the hook only while it is still the one in
    place): the ``distconv`` program keeps them for its life, a caller's process gets them for
    one in-process command only.
    """
    previous = sys.unraisablehook
    if getattr(previous, "distconv_quiet", False):
        return lambda: None

    def hook(unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and _ZARR_CODE in code.co_filename:
            return
        previous(unraisable)

    hook.distconv_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    # A failed read leaves its sibling reads in zarr's event loop (its concurrent_map gathers
    # without cancelling them): asyncio logs each as it is destroyed, pending or with its own
    # error never retrieved (a denied store fails all three metadata reads of zarr.open).
    logging.getLogger("asyncio").addFilter(_not_an_abandoned_zarr_task)

    def undo() -> None:
        logging.getLogger("asyncio").removeFilter(_not_an_abandoned_zarr_task)
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous

    return undo


_ABANDONED_TASK_REPORTS = (
    "Task was destroyed but it is pending",
    "Task exception was never retrieved",
)


def _not_an_abandoned_zarr_task(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not (text.startswith(_ABANDONED_TASK_REPORTS) and _ZARR_CODE in text)


def is_url(path: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a local path in URL form)."""
    return bool(_URL.match(path)) and not path.startswith("file://")


def remember_secret(value: str) -> None:
    """Blank ``value`` wherever :func:`redact` sees it from now on (values under 4 characters
    are too common to blank safely)."""
    if isinstance(value, str) and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``.

    Parameters
    ----------
    text : str
        A message, a command line, a URL.

    Returns
    -------
    str
        Without storage-option secrets, credential environment variables' values, URL
        passwords or presigned-URL signatures.
    """
    secrets = set(_SECRETS)
    secrets.update(v for v in map(os.environ.get, _SECRET_ENVIRONMENT) if v and len(v) >= 4)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)


def _is_secret_name(name: str) -> bool:
    return name not in _PUBLIC_NAMES and bool(_SECRET_NAME.search(name))


def _remember_option_secrets(options: Mapping[str, Any]) -> None:
    for name, value in options.items():
        if isinstance(value, Mapping):
            _remember_option_secrets(value)
        elif _is_secret_name(str(name)):
            remember_secret(str(value))


def public_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Storage options fit to record: credential values replaced by ``***``.

    Parameters
    ----------
    options : mapping, optional

    Returns
    -------
    dict
    """
    result: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            result[name] = public_options(value)
        else:
            result[name] = "***" if _is_secret_name(str(name)) else value
    return result


def parse_storage_options(items: Iterable[str]) -> dict[str, Any]:
    """``["endpoint_url=http://...", "anon=true"]`` → a storage options dict.

    Values that parse as JSON (numbers, ``true``/``false``/``null``, objects) become those values;
    anything else is a string. Secret values are remembered for :func:`redact`.

    Raises
    ------
    DistconvError
        An item without ``=``.
    """
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise DistconvError(f"--storage-option takes KEY=VALUE, got {redact(item)!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options[name.strip()] = value
    _remember_option_secrets(options)
    return options


def storage_failure(exc: BaseException) -> bool:
    """True for an exception of a store or its network client (disk, S3, GCS, HTTP)."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    module = type(exc).__module__.split(".")[0]
    return module in {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "fsspec", "adlfs"}


@dataclass(frozen=True)
class Location:
    """A store's place: an absolute local path or an fsspec URL.

    Attributes
    ----------
    url : str
        What is shown and recorded: the absolute path, or the URL without any password.
    storage_options : dict
        fsspec options for a URL (endpoint, credentials); never shown.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    address: str = field(default="", repr=False, compare=False)  # the URL as given
    given: str = field(default="", repr=False, compare=False)  # as the user wrote it, redacted

    @property
    def shown(self) -> str:
        """How messages name it: as the user wrote it (a relative path stays relative)."""
        return self.given or self.url

    @classmethod
    def parse(cls, path, storage_options: Mapping[str, Any] | None = None) -> Location:
        """A location from a path or URL; storage options given before for a URL above this
        one are reused when none are given."""
        text = os.fspath(path)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if not is_url(text):
            return cls(os.path.abspath(text), {}, os.path.abspath(text), text)
        parts = urlsplit(text)
        if parts.password:
            remember_secret(parts.password)
        url = redact(text).rstrip("/")
        if storage_options is None:
            storage_options = _options_above(url)
        else:
            _remember_option_secrets(storage_options)
            _OPTIONS.pop(url, None)  # re-inserted: the latest given for its bucket
            _OPTIONS[url] = dict(storage_options)
        return cls(url, dict(storage_options), text.rstrip("/"), url)

    @property
    def remote(self) -> bool:
        return is_url(self.url)

    @property
    def name(self) -> str:
        """The last component (``img.ome.zarr``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def child(self, *parts: str) -> Location:
        """The location of ``parts`` inside this one."""
        inner = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
        if not inner:
            return self
        if not self.remote:
            path = os.path.join(self.url, *inner.split("/"))
            return Location(path, {}, path, os.path.join(self.shown, *inner.split("/")))
        url = f"{self.url}/{inner}"
        return Location(url, self.storage_options, f"{self.address}/{inner}", url)

    def parent(self) -> Location | None:
        """The enclosing location, or None at a root or a bucket."""
        if not self.remote:
            parent = os.path.dirname(self.url)
            return None if parent == self.url else Location(parent, {}, parent)
        parts = urlsplit(self.url)
        if "/" not in parts.path.strip("/"):
            return None
        head = self.url.rsplit("/", 1)[0]
        return Location(head, self.storage_options, self.address.rsplit("/", 1)[0])

    def zarr_store(self, read_only: bool = True):
        """What ``zarr.open`` takes: the path itself, or an ``FsspecStore`` for a URL."""
        if not self.remote:
            return self.url
        from zarr.storage import FsspecStore

        with _protocol_installed(self.url):
            return FsspecStore.from_url(
                self.address, storage_options=self._fsspec_options(), read_only=read_only
            )

    def filesystem(self):
        """(fsspec filesystem, path inside it) for a URL (synchronous, for listing)."""
        from fsspec.core import url_to_fs

        with _protocol_installed(self.url):
            return url_to_fs(self.address, **self._fsspec_options())

    def _fsspec_options(self) -> dict[str, Any]:
        # No cached listings: fsspec reuses a filesystem per process, and a listing cached
        # before other processes wrote chunks would hide them from resume and info.
        return {"use_listings_cache": False, **self.storage_options}

    def exists(self) -> bool:
        """Whether anything is stored at or under this location."""
        if not self.remote:
            return os.path.lexists(self.url)
        fs, root = self.filesystem()
        return bool(fs.exists(root)) or bool(fs.find(root, maxdepth=1))

    def is_zarr(self) -> bool:
        """Whether Zarr metadata (v2 or v3, array or group) lies at this location."""
        names = ("zarr.json", ".zarray", ".zgroup")
        if not self.remote:
            return any(os.path.exists(os.path.join(self.url, n)) for n in names)
        fs, root = self.filesystem()
        return any(fs.exists(f"{root}/{n}") for n in names)

    def keys(self) -> set[str]:
        """Relative keys (``/``-separated) of every object under this location."""
        if not self.remote:
            keys = set()
            for root, _, files in os.walk(self.url):
                relative = os.path.relpath(root, self.url)
                for name in files:
                    key = name if relative == "." else os.path.join(relative, name)
                    keys.add(key.replace(os.sep, "/"))
            return keys
        fs, root = self.filesystem()
        fs.invalidate_cache(root)
        prefix = root.rstrip("/") + "/"
        return {p[len(prefix) :] for p in fs.find(root) if p.startswith(prefix)}

    def fingerprint(self, key: str, limit: int = 1 << 20) -> str | None:
        """SHA-256 of the object ``key`` under this location (its size and first ``limit``
        bytes), or None when there is no such object: what a worker compares with what the
        client read to prove it sees the same store."""
        try:
            if not self.remote:
                path = os.path.join(self.url, *key.split("/"))
                with open(path, "rb") as handle:
                    head = handle.read(limit)
                size = os.path.getsize(path)
            else:
                fs, root = self.filesystem()
                path = f"{root.rstrip('/')}/{key}"
                info = fs.info(path)
                if info.get("type") != "file":
                    return None
                size = int(info["size"])
                head = fs.cat_file(path, start=0, end=min(size, limit)) if size else b""
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return hashlib.sha256(str(size).encode() + b":" + head).hexdigest()

    def put(self, key: str, data: bytes) -> None:
        """Write the object ``key`` under this location (parents created)."""
        if not self.remote:
            path = os.path.join(self.url, *key.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(data)
            return
        fs, root = self.filesystem()
        fs.pipe_file(f"{root.rstrip('/')}/{key}", data)

    def delete(self, key: str) -> None:
        """Delete the object ``key`` under this location (missing is fine)."""
        if not self.remote:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.url, *key.split("/")))
            return
        fs, root = self.filesystem()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{root.rstrip('/')}/{key}")

    def remove(self) -> None:
        """Delete everything at or under this location (missing is fine)."""
        if not self.remote:
            if os.path.isdir(self.url) and not os.path.islink(self.url):
                shutil.rmtree(self.url, ignore_errors=True)
            elif os.path.lexists(self.url):
                os.remove(self.url)
            return
        fs, root = self.filesystem()
        with contextlib.suppress(FileNotFoundError):  # no bucket: nothing to remove
            if fs.find(root):
                fs.rm(root, recursive=True)
        fs.invalidate_cache(root)

    def remove_interrupted_writes(self) -> None:
        """Drop what a killed writer left that is not a chunk.

        zarr's local store writes ``<key>.<uuid hex>.partial`` then renames it; such files are
        never valid chunks. An object store's PUT is atomic: nothing is left half-written.
        """
        if self.remote:
            return
        for root, _, files in os.walk(self.url):
            for name in files:
                stem, _, suffix = name.rpartition(".")
                if suffix == "partial" and len(stem.rpartition(".")[2]) == 32:
                    os.remove(os.path.join(root, name))

    def relation(self, other: Location) -> str | None:
        """``"same"``, ``"inside"`` (self inside other), ``"contains"``, or None."""
        if self.remote != other.remote:
            return None
        if self.remote:
            a, b = _comparable_url(self.url), _comparable_url(other.url)
            if a == b:
                return "same"
            if a.startswith(b + "/"):
                return "inside"
            if b.startswith(a + "/"):
                return "contains"
            return None
        a_path, b_path = Path(self.url).resolve(), Path(other.url).resolve()
        if a_path == b_path:
            return "same"
        if b_path in a_path.parents:
            return "inside"
        if a_path in b_path.parents:
            return "contains"
        return None


_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}


@contextlib.contextmanager
def _protocol_installed(url: str) -> Iterator[None]:
    """fsspec's ImportError for a protocol whose package is missing, as one line."""
    try:
        yield
    except ImportError as exc:
        scheme = urlsplit(url).scheme
        package = _PROTOCOL_PACKAGES.get(scheme, "the fsspec implementation")
        raise DistconvError(
            f"{url}: {scheme}:// needs {package} (pip install {package}) ({exc})"
        ) from None
    except ValueError as exc:
        if "protocol" not in str(exc).lower():
            raise
        raise DistconvError(f"{url}: unknown storage protocol ({exc})") from None


def _comparable_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"s3a": "s3", "gcs": "gs"}.get(parts.scheme.lower(), parts.scheme.lower())
    path = re.sub(r"/+", "/", parts.path).rstrip("/")
    return urlunsplit((scheme, parts.netloc.lower(), path, "", ""))


def _options_above(url: str) -> dict[str, Any]:
    """Options given for this URL or one above it, else the latest given in its bucket."""
    best = ""
    for known in _OPTIONS:
        if (url == known or url.startswith(known + "/")) and len(known) > len(best):
            best = known
    if not best:
        bucket = _bucket_of(url)
        best = next((k for k in reversed(list(_OPTIONS)) if _bucket_of(k) == bucket), "")
    return dict(_OPTIONS.get(best, {}))


def _bucket_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def remote_error(location: Location, exc: BaseException, doing: str = "read") -> DistconvError:
    """One line for a store that cannot be used: no bucket, no credentials, access denied,
    unreachable, or nothing there.

    Parameters
    ----------
    location : Location
    exc : BaseException
        What zarr or fsspec raised.
    doing : str
        ``"read"`` or ``"write"``, for the message.
    """
    url, name = location.url, type(exc).__name__
    detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else name)
    if "NoCredentials" in name or "credential" in detail.lower() and "unable" in detail.lower():
        return DistconvError(
            f"no credentials to {doing} {url}: set them in the environment "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) or a credentials "
            "file, or pass --storage-option (storage_options=)"
        )
    if isinstance(exc, PermissionError) or "AccessDenied" in name or "Forbidden" in detail:
        return DistconvError(f"access denied to {doing} {url} ({detail})")
    if "bucket" in detail.lower() and ("not exist" in detail.lower() or "NoSuch" in detail):
        return DistconvError(f"{url}: no such bucket ({detail})")
    if isinstance(exc, (ConnectionError, TimeoutError)) or "Connect" in name:
        return DistconvError(f"cannot reach the store of {url} ({detail})")
    if bucket_missing(location):
        bucket = urlsplit(url).netloc
        return DistconvError(f"{url}: no such bucket {bucket!r}")
    if isinstance(exc, FileNotFoundError) or "NotFound" in name:
        return DistconvError(f"{url}: no such Zarr array or group")
    return DistconvError(f"{url} cannot be used ({name}: {detail})")


def bucket_missing(location: Location) -> bool:
    """True only when the store says the bucket (the URL's first component) does not exist;
    denied or failed probes say nothing (their own error is reported where it happens)."""
    try:
        fs, root = location.filesystem()
        fs.info(root.split("/", 1)[0])
    except FileNotFoundError:
        return True
    except Exception:  # access denied, unreachable: not "missing"
        return False
    return False
