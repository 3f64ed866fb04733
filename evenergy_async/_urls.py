"""Which URLs the client sends its token to, and the error for one it refuses.

A URL is followed only if it is an absolute http(s) URL on the client's own origin (scheme,
host and port of the base URL) without userinfo: the token must never leave for another host,
and a ``user:password@`` part would make aiohttp send other credentials.  A refused URL that
came from the server (a ``Link`` target, a Ref) is the server's fault, `InvalidResponse`; one
the caller gave is `InvalidRequest`.  yarl's own ``ValueError`` (a bad port, a broken IPv6
literal) never leaves the library.
"""

from __future__ import annotations

from yarl import URL

from .errors import InvalidRequest, InvalidResponse

__all__ = ["same_origin"]


def same_origin(
    reference: str | URL, origin: URL, *, base: URL | None = None, field: str | None = None
) -> URL:
    """`reference` (resolved against `base`, if given) as an absolute URL on `origin`.

    `field` names the caller's argument the URL came from; without it the URL is the server's.
    """
    try:
        url = URL(reference) if isinstance(reference, str) else reference
        if (
            isinstance(reference, str)
            and reference.startswith(f"{origin}/")
            and "#" not in reference
            and str(url) == reference
        ):
            # The common case, a server's absolute link on our own origin (every page of a
            # stream): its authority is exactly the origin's, so no userinfo and no other host
            # or port, and yarl writes it back unchanged (no default port, dot segment or
            # encoding to normalize, so joining it and reading it back would change nothing).
            return url
        if base is not None:
            url = base.join(url)
        refusal = refusal_of(url, origin)
    except (TypeError, ValueError) as exc:  # yarl: a bad port, a broken IPv6 literal, ...
        refusal = f"not a valid URL ({exc})"
    if refusal is None:
        # written out and read back: an explicit default port (":443") is dropped, so the
        # session's own origin check sees the same origin as this one
        return URL(str(url.with_fragment(None)))
    message = f"refusing {str(reference)[:200]!r}: {refusal}"
    if field is None:
        raise InvalidResponse(message)
    raise InvalidRequest(field, message)


def refusal_of(url: URL, origin: URL) -> str | None:
    """Why the client must not send to `url`, or None if it may: another origin than `origin`,
    or userinfo (which would travel with the request)."""
    if not url.is_absolute() or url.scheme not in ("http", "https"):
        return "not an absolute http(s) URL"
    if url.raw_user is not None or url.raw_password is not None:
        return "a URL with userinfo"
    # the effective port: https://host and https://host:443 are one origin
    if (url.scheme, url.host, url.port) != (origin.scheme, origin.host, origin.port):
        return f"not on the client's origin {str(origin)!r}"
    return None
