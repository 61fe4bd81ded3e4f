"""Signed, expiring links: a URL that opens one resource without an API token.

A browser ``<img>``, a report opened from the command line, or Label Studio's editor fetch
images and reports without an ``Authorization`` header. A signed link carries its own
credential in the query string, like an S3 pre-signed URL::

    /images/5/file?exp=1767225600&kid=3&sig=<HMAC-SHA256, URL-safe base64>

The signature is an HMAC-SHA256, under a server-side key (:class:`~activeseg.core.tables.LinkKey`,
32 random bytes that never leave the server), of the canonical string of the link: the key id,
the path, every other query parameter (sorted, percent-encoded) and the expiry. Changing any
of them (another image id, an added ``revision``, a later ``exp``) breaks the signature. The
newest unrevoked key signs; every unrevoked key verifies, so :func:`rotate` keeps issued links
working until the old key is :func:`revoke`\\ d, which ends all of them at once.

Verification is one primary-key lookup of the key and one HMAC, with no cache: a revocation
takes effect on the next request. Outcomes (:func:`verify`): a signature that does not match
(tampered, parameters changed, another path, malformed) is 403; an authentic link that has
expired, or one whose key is unknown or revoked, is 401 (ask for a new link).

Which paths may be signed, and with which parameters, is :data:`SIGNABLE`; who may ask for a
link is whoever may read the resource (:func:`check_readable`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Forbidden, Invalid, NotFound, Unauthorized
from activeseg.core.services import images, models
from activeseg.core.tables import MAX_ROW_ID, Image, LinkKey, ModelVersion, User

SIGNATURE_PARAMS = ("exp", "kid", "sig")
"""Query parameters that belong to the signature; every other one is signed."""

_ID = r"([1-9][0-9]{0,18})"
SIGNABLE: tuple[tuple[str, re.Pattern[str], frozenset[str]], ...] = (
    ("/images/{id}/file", re.compile(rf"/images/{_ID}/file"), frozenset()),
    ("/images/{id}/mask", re.compile(rf"/images/{_ID}/mask"), frozenset({"revision"})),
    (
        "/images/{id}/prediction.png",
        re.compile(rf"/images/{_ID}/prediction\.png"),
        frozenset({"raw"}),
    ),
    (
        "/images/{id}/uncertainty.png",
        re.compile(rf"/images/{_ID}/uncertainty\.png"),
        frozenset({"measure", "overlay"}),
    ),
    ("/models/{id}/report.html", re.compile(rf"/models/{_ID}/report\.html"), frozenset()),
    (
        "/models/{id}/plots/{name}.png",
        re.compile(rf"/models/{_ID}/plots/[a-z_]{{1,40}}\.png"),
        frozenset(),
    ),
)
"""(pattern shown in messages, full-match regex, the query parameters the route reads)."""

_MISMATCH = (
    "this link's signature does not match its path and parameters (the link was changed, or "
    "was signed for another resource); ask for a new link (POST /links)"
)
_MAX_EXP = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())  # datetime's last


@dataclass(frozen=True)
class LinkGrant:
    """What a valid signature admits: a GET of ``path`` until ``expires_at``. The signature
    is the capability: routes serve the resource without per-user project checks."""

    path: str
    key_id: int
    expires_at: datetime

    def seconds_left(self, now: datetime) -> int:
        return max(0, math.floor((self.expires_at - now).total_seconds()))


@dataclass(frozen=True)
class SignablePath:
    """A path checked against :data:`SIGNABLE`: its path, its query pairs and the row it
    names (``kind`` is ``image`` or ``model``)."""

    path: str
    params: list[tuple[str, str]]
    kind: str
    row_id: int


# --- keys ----------------------------------------------------------------------------------


# Built once: every lease signs its image links with the newest key.
_NEWEST_KEY = (
    select(LinkKey).where(LinkKey.revoked_at.is_(None)).order_by(LinkKey.id.desc()).limit(1)
)


def _newest_key(session: Session) -> LinkKey | None:
    return session.scalar(_NEWEST_KEY)


@dataclass(frozen=True)
class SigningKey:
    """What signing needs of a :class:`LinkKey`, detached from any session."""

    id: int
    secret: str


SIGNING_KEY_TTL_S = 1.0
"""How long a process signs with the key it read before it reads the newest one again (every
lease signs its links: the query was a tenth of a lease). A key rotated or revoked by this
process is dropped at once; one rotated or revoked by another process within this time."""
# Per engine (a test that makes a database again under the same URL gets a new engine).
_signing_keys: weakref.WeakKeyDictionary[Engine, tuple[float, SigningKey]] = (
    weakref.WeakKeyDictionary()
)
_signing_keys_lock = threading.Lock()


def _forget_signing_key() -> None:
    with _signing_keys_lock:
        _signing_keys.clear()


def signing_key(session: Session) -> SigningKey:
    """The newest unrevoked key (read at most every :data:`SIGNING_KEY_TTL_S` per process and
    database); the first one is made here when there is none. Two processes that race to make
    it each insert one and then both take the newest they see: at worst two valid keys, never
    a failed request."""
    cache = session.get_bind().engine
    now = time.monotonic()
    with _signing_keys_lock:
        hit = _signing_keys.get(cache)
    if hit is not None and now - hit[0] <= SIGNING_KEY_TTL_S:
        return hit[1]
    row = _newest_key(session)
    made = row is None
    if made:
        session.add(LinkKey(secret=secrets.token_hex(32)))
        session.flush()
        row = _newest_key(session)
    assert row is not None
    key = SigningKey(row.id, row.secret)
    if not made:  # a key made here is not kept: its insert may yet roll back
        with _signing_keys_lock:
            _signing_keys[cache] = (now, key)
    return key


def rotate(session: Session) -> LinkKey:
    """A new signing key. Links signed by the older keys keep working until those are
    revoked."""
    key = LinkKey(secret=secrets.token_hex(32))
    session.add(key)
    session.flush()
    _forget_signing_key()
    return key


def revoke(session: Session, key_id: int, now: datetime | None = None) -> LinkKey:
    """Revoke a key: every link it signed stops working at once (401). Revoking a revoked
    key keeps its first revocation time. The next link is signed by the newest key left, or
    by a new one."""
    key = session.get(LinkKey, key_id) if key_id <= MAX_ROW_ID else None
    if key is None:
        raise NotFound(f"link key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = now or datetime.now(UTC)
    _forget_signing_key()
    return key


def list_keys(session: Session) -> list[LinkKey]:
    """Every key, newest first (the caller must never show their secrets)."""
    return list(session.scalars(select(LinkKey).order_by(LinkKey.id.desc())))


# --- signing -------------------------------------------------------------------------------


def _canonical(kid: int, path: str, params: Iterable[tuple[str, str]], exp: int) -> bytes:
    """The signed string: one field per line, the parameters sorted and percent-encoded, so
    neither their order in the URL nor their encoding there changes it."""
    query = "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}"
        for k, v in sorted((k, v) for k, v in params if k not in SIGNATURE_PARAMS)
    )
    return f"activeseg-link-v1\n{kid}\n{path}\n{query}\n{exp}".encode()


def _signature(secret_hex: str, message: bytes) -> str:
    digest = hmac.new(bytes.fromhex(secret_hex), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _pairs(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = params.items() if isinstance(params, Mapping) else params
    return [(str(k), str(v)) for k, v in items]


def sign_with(
    key: LinkKey | SigningKey,
    path: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    expires_at: datetime,
) -> str:
    """The query string of ``path`` signed by ``key`` until ``expires_at`` (no database
    access: sign many links with one :func:`signing_key`)."""
    pairs = [(k, v) for k, v in _pairs(params) if k not in SIGNATURE_PARAMS]
    exp = math.ceil(expires_at.timestamp())
    sig = _signature(key.secret, _canonical(key.id, path, pairs, exp))
    return urlencode([*sorted(pairs), ("exp", str(exp)), ("kid", str(key.id)), ("sig", sig)])


def sign(
    session: Session,
    path: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    expires_at: datetime,
) -> str:
    """The query string (``...&exp=..&kid=..&sig=..``) that lets ``path`` with ``params`` be
    fetched without a token until ``expires_at``, signed by the newest key."""
    return sign_with(signing_key(session), path, params, expires_at)


def expiry(ttl_s: float, now: datetime | None = None) -> datetime:
    """``now + ttl_s``, in whole seconds (the ``exp`` parameter has no fraction)."""
    now = now or datetime.now(UTC)
    return datetime.fromtimestamp(math.ceil(now.timestamp() + ttl_s), UTC)


def signed_url(
    session: Session, path: str, ttl_s: float, base: str = "", now: datetime | None = None
) -> str:
    """``base`` + ``path`` (which may carry a query) signed for ``ttl_s`` seconds."""
    parts = urlsplit(path)
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = sign(session, parts.path, params, expiry(ttl_s, now))
    return f"{base.rstrip('/')}{parts.path}?{query}"


# --- verifying -----------------------------------------------------------------------------


def _one(pairs: list[tuple[str, str]], name: str) -> str:
    values = [v for k, v in pairs if k == name]
    if len(values) != 1:
        raise Forbidden(_MISMATCH)
    return values[0]


def _number(text: str, largest: int) -> int:
    if not (0 < len(text) <= len(str(largest)) and text.isascii() and text.isdigit()):
        raise Forbidden(_MISMATCH)
    value = int(text)
    if value > largest:
        raise Forbidden(_MISMATCH)
    return value


def verify(
    session: Session,
    path: str,
    query_params: Mapping[str, str] | Iterable[tuple[str, str]],
    now: datetime,
) -> LinkGrant:
    """The grant of a signed request for ``path`` with ``query_params`` (all of them, the
    signature's included), or the reason it is refused: :class:`Forbidden` when the
    signature does not match (tampered, parameters changed or added, another path),
    :class:`Unauthorized` when the key is unknown or revoked or the link has expired.

    Cost: one primary-key lookup of the key, one HMAC; the comparison is constant-time."""
    pairs = _pairs(query_params)
    sig = _one(pairs, "sig")
    exp = _number(_one(pairs, "exp"), _MAX_EXP)
    kid = _number(_one(pairs, "kid"), MAX_ROW_ID)
    key = session.get(LinkKey, kid)
    if key is None:
        raise Unauthorized("this link was signed by an unknown key; ask for a new one")
    if key.revoked_at is not None:
        raise Unauthorized("this link's signing key has been revoked; ask for a new one")
    expected = _signature(key.secret, _canonical(kid, path, pairs, exp)).encode("ascii")
    if not hmac.compare_digest(expected, sig.encode("utf-8", "replace")):
        raise Forbidden(_MISMATCH)
    expires_at = datetime.fromtimestamp(exp, UTC)
    if expires_at <= now:
        raise Unauthorized(
            f"this link expired at {expires_at.isoformat().replace('+00:00', 'Z')}; "
            "ask for a new one"
        )
    return LinkGrant(path=path, key_id=kid, expires_at=expires_at)


# --- what may be signed, and for whom ------------------------------------------------------


def signable_patterns() -> str:
    return ", ".join(shown for shown, _, _ in SIGNABLE)


def parse_signable(path_and_query: str) -> SignablePath:
    """``path_and_query`` checked against :data:`SIGNABLE` (:class:`Invalid` otherwise, with
    the list of signable paths, or of the parameters that path takes)."""
    parts = urlsplit(path_and_query)
    if parts.scheme or parts.netloc or parts.fragment:
        raise Invalid(
            "path must be a path on this server such as /images/5/file, without scheme, host "
            f"or fragment; signable paths: {signable_patterns()}"
        )
    for shown, pattern, allowed in SIGNABLE:
        match = pattern.fullmatch(parts.path)
        if match is None:
            continue
        row_id = int(match[1])
        if row_id > MAX_ROW_ID:
            raise Invalid(f"the id in the path is larger than {MAX_ROW_ID}")
        params = parse_qsl(parts.query, keep_blank_values=True)
        extra = sorted({k for k, _ in params} - allowed)
        if extra:
            takes = ", ".join(sorted(allowed)) or "no parameters"
            raise Invalid(
                f"{shown} takes {takes}; a link cannot carry "
                f"{', '.join(repr(k[:40]) for k in extra[:5])}"
            )
        kind = "image" if shown.startswith("/images/") else "model"
        return SignablePath(parts.path, params, kind, row_id)
    raise Invalid(f"this path cannot be signed; signable paths: {signable_patterns()}")


def check_readable(session: Session, user: User, target: SignablePath) -> None:
    """Refuse (404, like the routes) a link to a resource ``user`` may not read: only the
    routes' own checks decide, so a link never opens more than its issuer could."""
    if target.kind == "image":
        images.get_image_for(session, user, target.row_id)
    else:
        models.get_model_for(session, user, target.row_id)


# --- serving -------------------------------------------------------------------------------


def image_for(session: Session, who: User | LinkGrant, image_id: int) -> Image:
    """The image a request may read: a user's through the project check, a grant's as the
    signature names it (verify bound the grant to this very path)."""
    if isinstance(who, User):
        return images.get_image_for(session, who, image_id)
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found")
    return image


def model_for(session: Session, who: User | LinkGrant, model_id: int) -> ModelVersion:
    """The model version a request may read (see :func:`image_for`)."""
    if isinstance(who, User):
        return models.get_model_for(session, who, model_id)
    mv = session.get(ModelVersion, model_id)
    if mv is None:
        raise NotFound(f"model version {model_id} not found")
    return mv


def day_ceiling(moment: datetime) -> datetime:
    """The next UTC midnight at or after ``moment``: links made the same day share it."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if day == moment else day + timedelta(days=1)
