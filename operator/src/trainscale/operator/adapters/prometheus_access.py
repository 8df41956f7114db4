"""How the operator authenticates to Prometheus: bearer token, basic auth, TLS, headers.

Why this module exists: managed and multi-tenant Prometheus services (OpenShift's Thanos
Querier, Mimir with ``X-Scope-OrgID``, a Prometheus behind TLS and basic auth) refuse
anonymous queries. The settings are given once, operator-wide (``trainscale operator
--prometheus-*`` or the chart), in the spirit of KEDA's Prometheus scaler, and this module
turns them into what each HTTP request needs. Secrets come only from files (Kubernetes Secrets
or projected service-account tokens mounted into the operator pod) and are read at every
query, so a rotated token or password is used at once; their values never enter an error
message, a log line or a ``repr``. Only the standard library is used (``ssl``,
``urllib.request``).

The credentials, the client certificate and the custom headers are sent only to the
operator's own Prometheus URL (same scheme, host and port): a job that names another URL in
``spec.autoscaling.prometheus.url`` is queried without them, so no job can have the
operator's credentials sent to a server of its choosing. The CA bundle and
``insecureSkipVerify`` (how the operator verifies servers) apply to every URL.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass

log = logging.getLogger(__name__)

# RFC 9110 token characters: what a header name may contain.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers the operator sets itself (or that authentication owns): not overridable.
_RESERVED_HEADERS = frozenset({"authorization", "host", "accept", "content-length"})
REDACTED = "<redacted>"


class PrometheusAccessError(ValueError):
    """The access settings contradict each other, or a header is malformed."""


def parse_header(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (or ``NAME: VALUE``) as a header pair; raises on a malformed one."""
    sep = "=" if "=" in text and (":" not in text or text.index("=") < text.index(":")) else ":"
    name, found, value = text.partition(sep)
    name, value = name.strip(), value.strip()
    if not found or not name:
        raise PrometheusAccessError(f"header {text!r}: expected NAME=VALUE")
    check_header(name, value)
    return name, value


def check_header(name: str, value: str) -> None:
    """Refuse a header name that is not an HTTP token, a reserved one, or a value with CR/LF."""
    if not _HEADER_NAME.match(name):
        raise PrometheusAccessError(f"header name {name!r} is not a valid HTTP header name")
    if name.lower() in _RESERVED_HEADERS:
        raise PrometheusAccessError(
            f"header {name!r} is set by the operator itself (use the bearer token or basic "
            "auth settings for Authorization)"
        )
    if any(c in value for c in "\r\n\0"):
        raise PrometheusAccessError(f"header {name!r}: the value contains a line break")


@dataclass(frozen=True)
class PrometheusAccess:
    """Operator-wide settings for reaching Prometheus (every field optional).

    Attributes:
        bearer_token_file: File holding a bearer token (re-read at every query).
        username: Basic-auth user name (with ``password_file``).
        password_file: File holding the basic-auth password (re-read at every query).
        ca_file: PEM bundle of the CAs that sign Prometheus' certificate (instead of the
            system's CAs).
        cert_file / key_file: Client certificate and key (PEM) for mutual TLS.
        insecure_skip_verify: Do not verify Prometheus' certificate (a warning is logged).
        headers: Extra headers of every query, e.g. ``(("X-Scope-OrgID", "team-a"),)``.
    """

    bearer_token_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.bearer_token_file and (self.username or self.password_file):
            raise PrometheusAccessError(
                "give either a bearer token file or basic auth (username and password file), "
                "not both"
            )
        if bool(self.username) != bool(self.password_file):
            raise PrometheusAccessError("basic auth needs both a username and a password file")
        if self.key_file and not self.cert_file:
            raise PrometheusAccessError("a client key file needs a client certificate file")
        for name, value in self.headers:
            check_header(name, value)

    def __repr__(self) -> str:
        # Header values may be tenant names or keys: never in a repr.
        return (
            f"PrometheusAccess(bearer_token_file={self.bearer_token_file!r}, "
            f"username={'set' if self.username else None}, "
            f"password_file={self.password_file!r}, ca_file={self.ca_file!r}, "
            f"cert_file={self.cert_file!r}, key_file={self.key_file!r}, "
            f"insecure_skip_verify={self.insecure_skip_verify}, "
            f"headers={[name for name, _ in self.headers]})"
        )

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        """(what, path) of every file given, for a start-up check."""
        named = (
            ("bearer token file", self.bearer_token_file),
            ("password file", self.password_file),
            ("CA file", self.ca_file),
            ("client certificate file", self.cert_file),
            ("client key file", self.key_file),
        )
        return tuple((what, path) for what, path in named if path)

    def without_credentials(self) -> PrometheusAccess:
        """Only how servers are verified (CA, insecure): for a URL that is not the operator's."""
        return PrometheusAccess(
            ca_file=self.ca_file, insecure_skip_verify=self.insecure_skip_verify
        )

    def for_url(self, url: str, operator_url: str) -> PrometheusAccess:
        """These settings for ``url``: whole for the operator's own Prometheus (same scheme,
        host and port), without credentials, client certificate or headers for any other."""
        if _origin(url) == _origin(operator_url):
            return self
        return self.without_credentials()

    def describe_auth(self) -> str:
        """What authentication was sent, in words (never a secret)."""
        if self.bearer_token_file:
            sent = f"a bearer token from {self.bearer_token_file}"
        elif self.username:
            sent = f"basic auth as user {self.username!r}"
        else:
            sent = "no bearer token or basic auth"
        return sent + (" and a client certificate" if self.cert_file else "")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class PreparedRequest:
    """What one query sends: its headers (secret ones kept off redirects), the TLS context,
    and the secret values to redact from anything the query reports."""

    headers: dict[str, str]
    secret_headers: dict[str, str]
    context: ssl.SSLContext | None
    secrets: tuple[str, ...]

    def redact(self, text: str) -> str:
        """``text`` with every secret value replaced (a server may echo what it was sent)."""
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, REDACTED)
        return text


class PrometheusAccessFileError(OSError):
    """A credential or TLS file cannot be read; the message names the file, never its content."""


def _read_secret(what: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PrometheusAccessFileError(f"cannot read the {what} {path}: {reason}") from None
    if not value:
        raise PrometheusAccessFileError(f"the {what} {path} is empty")
    return value


class _ContextCache:
    """One SSL context per TLS setting, rebuilt when a CA or client certificate file changes
    (cert-manager rotates them in place)."""

    def __init__(self) -> None:
        self._cached: dict[tuple[object, ...], ssl.SSLContext] = {}

    def get(self, access: PrometheusAccess) -> ssl.SSLContext:
        stamps = tuple(_stamp(path) for path in (access.ca_file, access.cert_file, access.key_file))
        key = (
            access.ca_file,
            access.cert_file,
            access.key_file,
            access.insecure_skip_verify,
            stamps,
        )
        found = self._cached.get(key)
        if found is None:
            found = _build_context(access)
            self._cached = {key: found}  # keep only the newest
        return found


def _stamp(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _build_context(access: PrometheusAccess) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=access.ca_file or None)
        if access.cert_file:
            context.load_cert_chain(access.cert_file, access.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise PrometheusAccessFileError(
            f"cannot load the Prometheus TLS files (CA {access.ca_file}, client certificate "
            f"{access.cert_file}, key {access.key_file}): {exc}"
        ) from None
    if access.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_CONTEXTS = _ContextCache()


def prepare_request(access: PrometheusAccess, url: str) -> PreparedRequest:
    """Read the secret files now and return what a request to ``url`` sends.

    Raises:
        PrometheusAccessFileError: a file cannot be read or is empty (the message names the
            file, never its content).
    """
    secret_headers = dict(access.headers)
    secrets: list[str] = [value for _, value in access.headers]
    if access.bearer_token_file:
        token = _read_secret("bearer token file", access.bearer_token_file)
        secret_headers["Authorization"] = f"Bearer {token}"
        secrets.append(token)
    elif access.username and access.password_file:
        password = _read_secret("password file", access.password_file)
        pair = f"{access.username}:{password}".encode()
        encoded = base64.b64encode(pair).decode("ascii")
        secret_headers["Authorization"] = f"Basic {encoded}"
        secrets.extend((password, encoded))
    tls = urllib.parse.urlsplit(url).scheme.lower() == "https"
    context = _CONTEXTS.get(access) if tls else None
    return PreparedRequest(
        headers={"Accept": "application/json"},
        secret_headers=secret_headers,
        context=context,
        secrets=tuple(secrets),
    )


def warn_if_insecure(access: PrometheusAccess, url: str | None = None) -> None:
    """Log the warnings an operator must show at start-up: certificates not verified, or
    credentials that would cross the network in clear (``http://``)."""
    if access.insecure_skip_verify:
        log.warning(
            "Prometheus TLS certificates are NOT verified (--prometheus-insecure-skip-verify): "
            "anyone on the path can read the queries and the credentials; give the CA bundle "
            "(--prometheus-ca-file) instead"
        )
    sends_secrets = bool(access.bearer_token_file or access.password_file)
    if url and sends_secrets and urllib.parse.urlsplit(url).scheme.lower() == "http":
        log.warning(
            "Prometheus credentials are sent in clear to %s (http): use an https:// URL", url
        )


__all__ = [
    "REDACTED",
    "PreparedRequest",
    "PrometheusAccess",
    "PrometheusAccessError",
    "PrometheusAccessFileError",
    "check_header",
    "parse_header",
    "prepare_request",
    "warn_if_insecure",
]
