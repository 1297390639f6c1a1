"""Request and response models shared by the HTTP API and the gRPC service.

Both front ends build the same models, so a query is checked in one place whatever
transport brought it. Two kinds of failure: a value the caller chose that the
gateway refuses (`bad_value`: an empty query, k out of bounds, an unknown filter
field) is a `QueryError` (HTTP 400, INVALID_ARGUMENT); a request that cannot be read
at all (a missing field, a word where a number belongs) is a `MalformedRequest`
(HTTP 422, INVALID_ARGUMENT). `request_error` turns pydantic's errors into one of them.

Limits that are settings (`max_k`, `max_labels`, ...) are checked by the search core
against `QueryLimits`; limits that are properties of the API are checked here.

Whatever goes wrong while a request is read is the caller's error, never a 500: every
request model derives from `RequestModel`, which turns an unexpected exception inside
its validation into a refused value, and code that builds models from a transport's
own types (query strings, form fields, protobuf messages) runs inside `reading()`.
Sizes are checked before the work they bound: a filter's JSON text or Struct by its
bytes before it is parsed, repeated fields by their count before they are copied.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from google.protobuf import json_format, struct_pb2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from clipsearch.store import FilterError, validate_filter
from services.gateway.errors import GatewayError, MalformedRequest, PayloadTooLarge, QueryError

log = logging.getLogger(__name__)

Target = Literal["images", "captions"]
PartKind = Literal["text", "image", "sketch"]
# How an uploaded picture is brought into the collection's domain (see clipsearch.preprocess).
Normalization = Literal["auto", "off"]
TARGETS: tuple[Target, ...] = ("images", "captions")
NORMALIZATIONS: tuple[Normalization, ...] = ("auto", "off")
MAX_PARTS = 16
MAX_QUERY_CHARS = 2_000
MAX_TEMPLATES = 32
MAX_COLLECTION_NAME = 255
# Cosine similarities divided by a smaller temperature overflow the softmax (NaN probabilities).
MIN_TEMPERATURE = 1e-4
BAD_VALUE = "bad_value"
# A JSON text query (a query of MAX_QUERY_CHARS, escaped, and its options) fits in this.
MAX_QUERY_BODY_BYTES = 64 * 1024
# A filter's JSON text (query parameter, form field) or protobuf Struct is refused past this many
# bytes before it is parsed: the same room as in a JSON text query's body, however it is sent.
MAX_FILTER_BYTES = MAX_QUERY_BODY_BYTES
# Labels read from a request at all (the `max_labels` setting, at most this, applies after).
MAX_LABELS_READ = 1_000


def bad_value(message: str) -> PydanticCustomError:
    """A validation failure that is the caller's choice of value (HTTP 400), not a malformed request."""
    return PydanticCustomError(BAD_VALUE, "{reason}", {"reason": message})


class RequestModel(BaseModel):
    """Base of every request model: an unexpected exception while validating one (a check
    that did not foresee some input) is the caller's refused value, not a server error."""

    @model_validator(mode="wrap")
    @classmethod
    def _caller_input(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except (ValidationError, PydanticCustomError, ValueError, AssertionError):
            raise  # pydantic's own ways of refusing a value
        except Exception as exc:
            log.warning("%s: refused input that raised %s: %s", cls.__name__, type(exc).__name__, exc)
            raise bad_value(f"the request could not be read ({type(exc).__name__})") from None


@contextmanager
def reading(what: str = "the request") -> Iterator[None]:
    """Around code that turns what a transport delivered into request models: an unexpected
    exception is a malformed request (HTTP 422, INVALID_ARGUMENT)."""
    try:
        yield
    except (GatewayError, ValidationError):
        raise
    except Exception as exc:
        log.warning("refused %s: reading it raised %s: %s", what, type(exc).__name__, exc)
        raise MalformedRequest(f"{what} could not be read ({type(exc).__name__})") from None


def check_count(count: int, limit: int, what: str) -> None:
    """Refuse a repeated field before it is copied out of the request."""
    if count > limit:
        raise QueryError(f"at most {limit} {what}, got {count}")


def filter_from_json(raw: str | None) -> dict[str, Any] | None:
    """A filter given as a JSON string (form fields and query strings); empty: none."""
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_FILTER_BYTES:  # characters: at least as many bytes
        raise QueryError(f"the filter is {len(raw)} characters; the limit is {MAX_FILTER_BYTES}")
    try:
        parsed = json.loads(raw)
    # RecursionError: "[[[[..." nested too deep.
    except (json.JSONDecodeError, RecursionError):
        raise QueryError('filter must be a JSON object, e.g. {"label": 7}') from None
    except ValueError:  # an integer of more digits than Python converts (4,300): never a 64-bit one
        raise QueryError("filter holds an integer of thousands of digits; values are 64-bit") from None
    if not isinstance(parsed, dict):
        raise QueryError('filter must be a JSON object, e.g. {"label": 7}')
    return parsed


def filter_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A filter given as a protobuf Struct (gRPC)."""
    size = struct.ByteSize()
    if size > MAX_FILTER_BYTES:
        raise QueryError(f"the filter is {size} bytes; the limit is {MAX_FILTER_BYTES}")
    try:
        found: dict[str, Any] = json_format.MessageToDict(struct)
    except ValueError:  # NaN or infinity in a Struct number
        raise QueryError("filter values must be finite numbers, strings or lists of them") from None
    return found


def check_text(text: str, what: str) -> str:
    """Stripped text; empty, too long or not valid Unicode is refused."""
    stripped = text.strip()
    if not stripped:
        raise bad_value(f"the {what} is empty")
    try:
        stripped.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800" in JSON) cannot be sent on to the encoder
        raise bad_value(f"the {what} is not valid Unicode (it has unpaired surrogates)") from None
    if len(stripped) > MAX_QUERY_CHARS:
        raise bad_value(f"the {what} is {len(stripped)} characters; the limit is {MAX_QUERY_CHARS}")
    return stripped


def _query_text(text: str) -> str:
    return check_text(text, "query")


def _checked_filter(spec: Any) -> dict[str, Any] | None:
    try:
        return validate_filter(spec)
    except FilterError as exc:
        raise bad_value(str(exc)) from None


def _collection_name(name: Any) -> Any:
    if name == "":
        return None  # proto3 strings and empty form fields: not given
    if isinstance(name, str) and len(name) > MAX_COLLECTION_NAME:
        raise bad_value(f"collection names are at most {MAX_COLLECTION_NAME} characters")
    return name


QueryText = Annotated[str, AfterValidator(_query_text)]
CollectionName = Annotated[str | None, BeforeValidator(_collection_name)]
# Any JSON at parse time: what the filter holds is the caller's choice, refused with a reason (400).
Filter = Annotated[dict[str, Any] | None, BeforeValidator(_checked_filter)]


class SearchOptions(RequestModel):
    k: int = Field(default=10, description="number of hits")
    offset: int = Field(default=0, description="hits to skip (paging)")
    filter: Filter = Field(default=None, description='payload filter, e.g. {"label": 7} or {"label": [1, 7]}')
    target: Target = Field(default="images", description="what to search: images | captions")
    collection: CollectionName = Field(
        default=None, description="the collection to search; empty: the default"
    )

    @field_validator("k")
    @classmethod
    def _positive_k(cls, k: int) -> int:
        if k < 1:
            raise bad_value(f"k must be at least 1, got {k}")
        return k

    @field_validator("offset")
    @classmethod
    def _offset_not_negative(cls, offset: int) -> int:
        if offset < 0:
            raise bad_value(f"offset must be at least 0, got {offset}")
        return offset

    @field_validator("target", mode="before")
    @classmethod
    def _known_target(cls, target: Any) -> Any:
        if target not in TARGETS:
            raise bad_value(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        return target

    def options(self) -> SearchOptions:
        """Just the options (a query model's other fields dropped)."""
        return SearchOptions(
            k=self.k, offset=self.offset, filter=self.filter, target=self.target, collection=self.collection
        )


class ImageOptions(SearchOptions):
    """Options of an image query: also whether the picture is brought into the collection's domain."""

    normalization: Normalization = Field(
        default="auto",
        description="auto: a picture unlike the collection's own images gets its model's normalisation "
        "(a digit on paper becomes MNIST-like); off: embedded as it is",
    )

    @field_validator("normalization", mode="before")
    @classmethod
    def _known_normalization(cls, value: Any) -> Any:
        if value not in NORMALIZATIONS:
            raise bad_value(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {value!r}")
        return value


class TextQuery(SearchOptions):
    query: QueryText = Field(description="what to look for, e.g. 'a handwritten seven'")


class QueryPart(RequestModel):
    """One part of a mixed query: a text, or the bytes of an image or a sketch."""

    kind: PartKind
    content: str | bytes
    weight: float = 1.0

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, weight: float) -> float:
        if not math.isfinite(weight):
            raise bad_value("a part has a weight that is not a finite number")
        return weight if weight != 0 else 1.0

    @model_validator(mode="after")
    def _content_fits_kind(self) -> QueryPart:
        if self.kind == "text":
            if not isinstance(self.content, str):
                raise bad_value("a text part needs a string")
            self.content = check_text(self.content, "part text")
        elif not isinstance(self.content, bytes):
            raise bad_value(f"an {self.kind} part needs bytes")
        elif not self.content:
            raise bad_value(f"the {self.kind} part upload is empty")
        return self


class MixedQuery(SearchOptions):
    """Weighted parts combined into one query vector; negative weights steer away."""

    parts: list[QueryPart]

    @field_validator("parts")
    @classmethod
    def _part_count(cls, parts: list[QueryPart]) -> list[QueryPart]:
        if not parts:
            raise bad_value("a mixed query needs at least one part")
        if len(parts) > MAX_PARTS:
            raise bad_value(f"a mixed query takes at most {MAX_PARTS} parts, got {len(parts)}")
        return parts


def _checked_templates(templates: list[str]) -> list[str]:
    clean = [template.strip() for template in templates if template.strip()]
    if len(clean) > MAX_TEMPLATES:
        raise bad_value(f"at most {MAX_TEMPLATES} templates, got {len(clean)}")
    for template in clean:
        check_text(template, "template")
        rest = template.replace("{}", "")
        if template.count("{}") != 1 or "{" in rest or "}" in rest:
            raise bad_value(f'template {template!r} must contain "{{}}" exactly once (for the label)')
    return clean


def _checked_labels(labels: list[str]) -> list[str]:
    clean = [label.strip() for label in labels if label.strip()]
    if not clean:
        raise bad_value("give at least one candidate label")
    if len(set(clean)) != len(clean):
        raise bad_value("candidate labels must be distinct")
    for label in clean:
        check_text(label, "label")
    return clean


class ClassifyQuery(RequestModel):
    """Zero-shot classification of one image or sketch against candidate labels."""

    kind: Literal["image", "sketch"] = "image"
    labels: Annotated[list[str], AfterValidator(_checked_labels)]
    templates: Annotated[list[str], AfterValidator(_checked_templates)] = Field(
        default_factory=list, description='prompt templates with "{}"; empty: the collection\'s'
    )
    temperature: float | None = Field(default=None, description="softmax temperature; empty: the model's")
    collection: CollectionName = Field(default=None, description="whose model classifies; empty: the default")

    @field_validator("temperature")
    @classmethod
    def _usable_temperature(cls, temperature: float | None) -> float | None:
        if not temperature:  # None or 0: the model's own
            return None
        if not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
            raise bad_value(
                f"temperature must be a number of at least {MIN_TEMPERATURE} (or 0 for the model's own)"
            )
        return temperature


# --- responses ---


class Hit(BaseModel):
    id: str
    score: float
    payload: dict[str, Any]
    image_url: str | None


class SearchResponse(BaseModel):
    hits: list[Hit]
    took_ms: float
    model: str
    collection: str
    # Image and sketch queries: the normalisation applied to the upload ("none", "mnist", "line-art").
    normalization: str | None = None


class LabelScore(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    scores: list[LabelScore]
    took_ms: float
    model: str
    templates: list[str]
    temperature: float


class CollectionOut(BaseModel):
    name: str
    model: str | None = Field(description="the model that built it, by the name the encoder serves it under")
    fingerprint: str
    version: str
    points: int
    vectors: list[str] = Field(description='"image", and "caption" where items have captions')
    targets: list[Target]
    filter_fields: dict[str, list[Any] | None] = Field(
        description="payload fields usable in filters, with their values (null: too many to list)"
    )
    sketch_normalization: str | None
    attribution: str | None = Field(default=None, description="credits the images' licences ask for")
    ready: bool
    problem: str | None = None


class CollectionsResponse(BaseModel):
    collections: list[CollectionOut]
    default_collection: str


class ErrorOut(BaseModel):
    detail: str


# --- limits that are settings ---


@dataclass(frozen=True)
class QueryLimits:
    max_k: int
    max_offset: int
    max_labels: int
    max_upload_bytes: int

    def check_options(self, options: SearchOptions) -> None:
        if options.k > self.max_k:
            raise QueryError(f"k must be between 1 and {self.max_k}, got {options.k}")
        if options.offset > self.max_offset:
            raise QueryError(f"offset must be between 0 and {self.max_offset}, got {options.offset}")

    def check_upload(self, data: bytes, what: str) -> None:
        if not data:
            raise QueryError(f"the {what} upload is empty")
        if len(data) > self.max_upload_bytes:
            raise PayloadTooLarge(
                f"the {what} upload is {len(data)} bytes; the limit is {self.max_upload_bytes}"
            )

    def check_labels(self, labels: Sequence[str]) -> None:
        if len(labels) > self.max_labels:
            raise QueryError(f"at most {self.max_labels} labels, got {len(labels)}")


# --- pydantic errors as gateway errors ---


def request_error(errors: Sequence[ErrorDetails] | Sequence[dict[str, Any]]) -> GatewayError:
    """A QueryError when every problem is a refused value (the first one's message), else a
    MalformedRequest naming each problem ("field: what is wrong")."""
    if errors and all(error.get("type") == BAD_VALUE for error in errors):
        return QueryError(str(errors[0].get("msg")))
    problems = []
    for error in errors:
        location = list(error.get("loc", ()))
        if location and location[0] in ("body", "query", "path", "header", "cookie", "form"):
            location = location[1:]  # where the field came from, not part of its name
        where = ".".join(str(part) for part in location)
        message = str(error.get("msg", "invalid"))
        problems.append(f"{where}: {message}" if where else message)
    return MalformedRequest("; ".join(problems) or "invalid request")
