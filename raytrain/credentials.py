"""Storage credentials: taken out of URIs where they enter raytrain, kept only in the process environment.

The usual places (environment, instance profile) need nothing from raytrain. Credentials written into
a URI (``s3://KEY:SECRET@bucket/...``, or secret-like query values such as ``session_token=``) are taken out of it
where the URI enters raytrain (``adopt``: spec loading, the CLI's run arguments): what raytrain keeps, writes and
prints is the URI without them, and the credentials live only in this process's environment
(``RAYTRAIN_STORAGE_CREDENTIALS``, keyed by ``scheme://host``), which the processes of an embedded Ray inherit
from the process that starts it. They never travel in a Ray runtime env: Ray logs runtime envs
(``runtime_env_agent.log``) and shows them in its job table. A cluster's nodes have their own: the same variable in
their environment, or ``RAYTRAIN_STORAGE_CREDENTIALS_FILE`` naming a file of the same JSON (a mounted secret on
KubeRay, a file only its user can read on a local cluster), read where a filesystem is opened (docs/security.md).
Each process resolves them again when it opens the filesystem; the filesystem objects handed to Ray pickle the
location without credentials (Tune saves them in its experiment state).
"""

from __future__ import annotations

import os
import re

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_SECRET_WORDS = "secret|token|key|password|passwd|session|credential|signature|sig"
_SECRET_QUERY = re.compile(rf"(?:{_SECRET_WORDS})", re.I)  # a query key holding a credential
CREDENTIALS_ENV = "RAYTRAIN_STORAGE_CREDENTIALS"
CREDENTIALS_FILE_ENV = "RAYTRAIN_STORAGE_CREDENTIALS_FILE"
_FORMAT = '{"scheme://host": {"userinfo": "KEY:SECRET", "query": {...}}}'


def is_uri(location) -> bool:
    """Whether ``location`` is a ``scheme://`` URI (``file://`` counts as a path)."""
    return isinstance(location, str) and bool(_URI.match(location)) and not location.startswith("file://")


def redact(location: str) -> str:
    """A URI fit for logs: no user:password and no query values that look like secrets."""
    s = re.sub(r"://[^/@?]*@", "://***@", str(location))
    return re.sub(rf"((?:{_SECRET_WORDS})[a-z_]*=)[^&]*", r"\1***", s, flags=re.I)


def _split(location: str) -> tuple[str, str, dict[str, str]]:
    """(the URI without credentials, its user info, its secret-like query values)."""
    from urllib.parse import parse_qsl, urlencode

    base, sep, query = location.partition("?")
    scheme, _, rest = base.partition("://")
    host, slash, path = rest.partition("/")
    userinfo, at, host = host.rpartition("@")
    pairs = parse_qsl(query, keep_blank_values=True)
    secret = {k: v for k, v in pairs if _SECRET_QUERY.search(k)}
    kept = urlencode([(k, v) for k, v in pairs if k not in secret], safe=":/")
    return f"{scheme}://{host}{slash}{path}" + (f"?{kept}" if kept else ""), userinfo, secret


def _key(location: str) -> str:
    """What credentials are registered under: ``scheme://host`` (a bucket)."""
    scheme, _, rest = location.partition("?")[0].partition("://")
    return f"{scheme}://{rest.split('/')[0].rpartition('@')[2]}"


def _registered() -> dict[str, dict]:
    """scheme://host -> credentials: those of ``RAYTRAIN_STORAGE_CREDENTIALS_FILE``'s file, then this process's
    ``RAYTRAIN_STORAGE_CREDENTIALS`` (adopted from URIs, or the node's own), which win for the same bucket."""
    import json

    table: dict[str, dict] = {}
    path = os.environ.get(CREDENTIALS_FILE_ENV)
    if path:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise PermissionError(f"{CREDENTIALS_FILE_ENV}: cannot read {path} ({e.strerror})") from None
        try:
            table.update(json.loads(text or "{}"))
        except ValueError:
            raise ValueError(f"{CREDENTIALS_FILE_ENV}: {path} is not JSON; it maps {_FORMAT}") from None
    try:
        table.update(json.loads(os.environ.get(CREDENTIALS_ENV) or "{}"))
    except ValueError:
        raise ValueError(f"{CREDENTIALS_ENV}: not JSON; it maps {_FORMAT}") from None
    return table


def adopt(location: str) -> str:
    """``location`` without its credentials, which are kept in this process's environment for later opens (and for
    the Ray processes started from it). A location without credentials is returned as it is."""
    import json

    if not is_uri(location):
        return location
    clean, userinfo, secret = _split(location)
    if not userinfo and not secret:
        return location
    import contextlib

    table = {}
    with contextlib.suppress(ValueError):  # a malformed variable is replaced, and named where it is read
        table = json.loads(os.environ.get(CREDENTIALS_ENV) or "{}")
    table[_key(clean)] = {"userinfo": userinfo, "query": secret}
    os.environ[CREDENTIALS_ENV] = json.dumps(table)
    return clean


def has_credentials(location: str) -> bool:
    return is_uri(location) and _split(location)[0] != location


def with_credentials(location: str) -> str:
    from urllib.parse import urlencode

    creds = _registered().get(_key(location))
    if not creds or has_credentials(location):
        return location
    scheme, _, rest = location.partition("://")
    if creds.get("userinfo"):
        rest = f"{creds['userinfo']}@{rest}"
    if creds.get("query"):
        rest += ("&" if "?" in rest else "?") + urlencode(creds["query"])
    return f"{scheme}://{rest}"


def open_uri(location: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as e:  # pyarrow raises ArrowInvalid / ValueError / OSError for bad or unreachable URIs
        raise ValueError(f"storage {redact(location)}: not a usable pyarrow.fs URI ({type(e).__name__}: {e})") from None
