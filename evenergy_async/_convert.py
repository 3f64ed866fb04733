"""The codec: response bodies into the attrs models, models back into JSON.

Response bodies are decoded by msgspec, in C, straight from the bytes into the frozen attrs
models, checking every type the models declare on the way (country codes, offset-aware
date-times and enums included: see the aliases in `models`).  Fields the models do not know
are skipped, so a server that adds fields never breaks a client.  Whatever does not fit
raises InvalidResponse naming the JSON path (``$[3].email``): no msgspec error escapes.

A relation is a URL, or an object where ``expand=`` inlined it.  msgspec hands both to one
hook, bound to a `Codec`, so every Ref resolves through the client that decoded it; an
expanded relation arrives resolved and is collected so the client can prime its cache.

The same types serve the other direction: request bodies are `msgspec.to_builtins` of the
models (UNSET fields left out, None kept as null, a Ref as its URL), and `convert` reads
API-shaped Python data (JSON Lines, CLI input) into a model.  `to_api` (the export) writes a
model back in the server's shape.
"""

from __future__ import annotations

import enum
import re
import weakref
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

import attrs
import msgspec

from .errors import InvalidRequest, InvalidResponse
from .models import UNSET, Location, Price, Prices
from .refs import _MISSING, Ref, Resolver, ref_to

T = TypeVar("T")

__all__ = ["Codec", "convert", "decode", "decode_list", "to_api", "to_wire"]

# A stream of thousands of users shares a few tariffs and sites: one Ref per URL, so
# resolving one user's tariff resolves it for all of them, and decoding allocates less.
_MAX_SHARED_REFS = 1024

_PRICES = tuple[Price, ...]
# The class of `User.vehicles` and `evses` items.
_REF_ANY = ref_to(Any)
_DECODE_ERRORS = (
    msgspec.ValidationError,
    msgspec.DecodeError,
    RecursionError,  # expansions nested deeper than any the API makes
)


class Codec:
    """Decoders whose Refs resolve through one resolver (a client, or one of its views).

    Not for concurrent use from several threads; within one event loop each decode is one
    synchronous call, so streams of one client may share a codec.
    """

    __slots__ = ("__weakref__", "_decoders", "_expanded", "_hook", "_resolver", "_shared")

    def __init__(self, resolver: Resolver | None) -> None:
        self._resolver = resolver
        self._expanded: list[Ref[Any]] = []
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
        self._shared: dict[str, Ref[Any]] = {}
        shared = self._shared
        # Weak: the hook (held by the codec's decoders) must not hold the codec, or every codec
        # would be a reference cycle that only the garbage collector frees.
        expanded_ref = weakref.WeakMethod(self._expanded_ref)
        ref_any = _REF_ANY
        new = object.__new__

        # Called for every relation of every user (about 2.6 times per user): a closure over
        # locals, as cheap as a Python call gets.  The models' only custom types are the Ref
        # classes of `ref_to` and `Prices`, so a string is always a URL, and `tp` (but for
        # Prices, which takes a plain Ref) the class of the Ref it makes.
        def hook(tp: Any, obj: Any) -> Any:
            if type(obj) is str:
                if tp is ref_any:  # vehicles, evses: a URL of each user's own, nothing to share
                    # Ref.__init__ inlined (tests/test_convert.py holds them equal): its Python
                    # frame is most of what the Ref costs, and there are 1-2 per user.
                    ref = new(ref_any)
                    ref.url = obj
                    ref._value = _MISSING
                    ref._resolver = resolver
                    return ref
                ref = shared.get(obj)
                if ref is None or ref.__class__ is not tp:
                    if len(shared) >= _MAX_SHARED_REFS:
                        shared.clear()
                    ref = shared[obj] = (Ref if tp is Prices else tp)(obj, _MISSING, resolver)
                return ref
            expanded = expanded_ref()
            assert expanded is not None  # a decoder runs only while its codec is in use
            return expanded(tp, obj)

        self._hook = hook

    def decode(self, body: bytes, cls: type[T]) -> tuple[T, list[Ref[Any]]]:
        """One resource from a JSON body; also the relations that arrived expanded.

        Its Refs are its own (shared within the body only): a resource fetched later gets
        new ones, resolved afresh through the client's cache, not ones resolved long ago."""
        self._shared.clear()
        value: T = self._decode(body, cls, cls, cls.__name__)
        return value, self.take_expanded()

    def decode_list(self, body: bytes, cls: type[T]) -> tuple[list[T], list[Ref[Any]]]:
        """A JSON array of `cls`; also the relations that arrived expanded."""
        items: list[T] = self._decode(body, (cls,), list[cls], f"{cls.__name__} list")  # type: ignore[valid-type]
        return items, self.take_expanded()

    def take_expanded(self) -> list[Ref[Any]]:
        """The relations that arrived expanded since the last call."""
        expanded = self._expanded
        if expanded:
            self._expanded = []
        return expanded

    def _decode(self, body: bytes, key: Any, target: Any, what: str) -> Any:
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = self._decoders[key] = msgspec.json.Decoder(target, dec_hook=self._hook)
        try:
            return decoder.decode(body)
        except _DECODE_ERRORS as exc:
            self._expanded = []
            raise InvalidResponse(f"cannot decode {what}: {_reason(exc)}") from None

    def _expanded_ref(self, tp: Any, obj: Any) -> Any:
        """A resolved Ref from an object ``expand=`` inlined; expanded prices."""
        if tp is Prices:
            if type(obj) is list:
                return self._convert(obj, _PRICES)
            raise TypeError(f"Expected a URL or an array of prices, got `{_json_type(obj)}`")
        target = getattr(tp, "target", Any)
        if type(obj) is not dict or target is Any:
            raise TypeError(f"Expected a URL, got `{_json_type(obj)}`")
        url = obj.get("url")
        if type(url) is not str:
            raise TypeError("Expected an expanded object with a `url`")
        ref: Ref[Any] = tp(url, self._convert(obj, target), self._resolver)
        self._expanded.append(ref)
        return ref

    def _convert(self, obj: Any, target: Any) -> Any:
        try:
            return msgspec.convert(obj, target, dec_hook=self._hook)
        except msgspec.ValidationError as exc:
            # Raised again as a ValueError, msgspec adds the path of the field holding `obj`;
            # `_reason` joins the two paths into one.
            raise ValueError(str(exc)) from None


def decode(body: bytes, cls: type[T], resolver: Resolver | None) -> tuple[T, list[Ref[Any]]]:
    """One resource from a JSON body; also returns the relations that arrived expanded."""
    return Codec(resolver).decode(body, cls)


def decode_list(
    body: bytes, cls: type[T], resolver: Resolver | None
) -> tuple[list[T], list[Ref[Any]]]:
    """A JSON array of `cls`; also returns the relations that arrived expanded."""
    return Codec(resolver).decode_list(body, cls)


def convert(data: Any, cls: type[T], resolver: Resolver | None = None) -> T:
    """API-shaped Python data (a JSON Lines record, CLI input) as a model, by the same rules
    as a response body; InvalidRequest names the path of what does not fit."""
    codec = Codec(resolver)
    try:
        value: T = msgspec.convert(data, cls, dec_hook=codec._hook)
    except _DECODE_ERRORS as exc:
        raise InvalidRequest("record", f"cannot read {cls.__name__}: {_reason(exc)}") from None
    return value


_AT = re.compile(r" - at `\$([^`]*)`")
_MAX_REASON = 300


def _reason(exc: BaseException) -> str:
    """msgspec's message, with the paths of nested conversions joined into one."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    message = str(exc)
    paths = _AT.findall(message)
    if paths:
        # Innermost path first: "Expected `str` - at `$.name` - at `$[0].tariff`".
        message = _AT.sub("", message) + " - at `$" + "".join(reversed(paths)) + "`"
    if len(message) > _MAX_REASON:
        message = message[: _MAX_REASON - 3] + "..."
    return message


def _json_type(obj: object) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, int | float):
        return "number"
    if isinstance(obj, dict):
        return "object"
    return "array" if isinstance(obj, list) else type(obj).__name__


# --- to the wire: request bodies and the export ----------------------------------------------


def _url_of(value: Any) -> Any:
    if isinstance(value, Ref):
        return value.url
    raise TypeError(f"cannot express {type(value).__name__} as JSON")


_LOCATION_FIELDS = tuple(field.name for field in attrs.fields(Location))


def to_wire(value: Any) -> Any:
    """A request value (Location, LatLong, Ref, plain data) as JSON-ready data: UNSET fields
    left out (absent means "leave unchanged"), None kept (null means "clear")."""
    wire = msgspec.to_builtins(value, enc_hook=_url_of)
    if isinstance(value, Location):  # in the model's order (msgspec sorts a slotted class's)
        wire = {name: wire[name] for name in _LOCATION_FIELDS if name in wire}
    return wire


# --- models back to the API's JSON (the `evenergy` export) ---------------------------------
# By hand rather than msgspec.to_builtins: that keeps tuples and sorts the fields of slotted
# classes, and the export should read like the server's JSON.

_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def to_api(value: Any) -> Any:
    """A decoded model (User, Location, Tariff, ...) as the API's JSON data.

    Field names are the API's; `UNSET` fields are left out, None stays null; datetimes are
    ISO 8601 (``Z`` for UTC), dates ISO; a Ref is its URL, or once resolved its resource in
    the same shape (as ``expand=`` would have inlined it).
    """
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    if isinstance(value, Ref):
        return to_api(value.value) if value.resolved else value.url
    if isinstance(value, datetime):
        return _iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    cls = type(value)
    names = _FIELDS.get(cls)
    if names is None and attrs.has(cls):
        names = _FIELDS[cls] = tuple(f.name for f in attrs.fields(cls))
    if names is not None:
        data: dict[str, Any] = {}
        for name in names:
            item = getattr(value, name)
            if item is not UNSET:
                data[name] = to_api(item)
        return data
    if isinstance(value, Mapping):
        return {str(k): to_api(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_api(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_api(value.value)
    raise InvalidRequest("value", f"cannot express {type(value).__name__} as API JSON")


def _iso_datetime(value: datetime) -> str:
    text = value.isoformat()
    if value.utcoffset() == timedelta(0) and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return text
