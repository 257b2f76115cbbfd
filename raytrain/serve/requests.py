"""The bodies of /predict, /recommend and /feedback as pydantic models that FastAPI validates, and the error replies.

Every 4xx reply is ``{"error": "<field>: <what is wrong>"}``: FastAPI's validation errors (and its own body-parsing
errors) are turned into that form here, with the texts the checks below give. What depends on the application (its
user and item key names, its limits) is checked by each model's ``check`` against the serve config.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException

from .features import RequestError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _refuse_unless(ok: bool, text: str) -> None:
    if not ok:
        raise ValueError(text)


def _rows(v: Any) -> Any:
    _refuse_unless(isinstance(v, list) and bool(v), "expected a non-empty list of objects")
    return v


def _candidates(v: Any) -> Any:
    _refuse_unless(v is None or (isinstance(v, list) and bool(v)), "expected a non-empty list of item ids")
    return v


def _flag(v: Any) -> Any:
    _refuse_unless(isinstance(v, bool), f"expected true or false, got {v!r}")
    return v


def _request_id(v: Any) -> Any:
    _refuse_unless(isinstance(v, str) and bool(v), "expected the request_id string a /recommend reply gave")
    return v


def _reward(v: Any) -> float:
    _refuse_unless(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v),
                   f"expected a finite number, got {v!r}")
    return float(v)


class _Body(BaseModel):
    # the user and item fields are named by the application's data: they arrive as extra fields (see ``check``)
    model_config = ConfigDict(extra="allow")

    def given(self, name: str) -> bool:
        return name in (self.model_extra or {}) or name in self.model_fields_set

    def value(self, name: str, default: Any = None) -> Any:
        return (self.model_extra or {}).get(name, default)

    def check_fields(self, named: set[str]) -> None:
        """Only the model's fields and the application's ``named`` ones (its user or item key)."""
        allowed = set(type(self).model_fields) | named
        extra = sorted(set(self.model_extra or {}) - allowed)
        if extra:
            raise RequestError(f"body: unknown field(s) {', '.join(map(repr, extra))}; fields: "
                               f"{', '.join(sorted(allowed))}")


class PredictRequest(_Body):
    rows: Annotated[Any, BeforeValidator(_rows)] = Field(
        None, validate_default=True, description="objects: a user id, an item id, any other feature")
    variant: Any = Field(None, description="a variant to answer (where serve.force_variant is body)")

    def check(self, max_rows: int) -> None:
        self.check_fields(set())
        if len(self.rows) > max_rows:
            raise RequestError(f"rows: {len(self.rows)} rows, more than the {max_rows} allowed per request "
                               "(serve.max_request_rows)", 413)


class RecommendRequest(_Body):
    k: Any = Field(10, description="how many items")
    candidates: Annotated[Optional[list[Any]], BeforeValidator(_candidates)] = Field(
        None, description="item ids to rank (default: every known item)")
    exclude_rated: Annotated[bool, BeforeValidator(_flag)] = Field(
        False, description="leave out the items the user has interacted with")
    new_items: Annotated[Optional[list[Any]], BeforeValidator(_candidates)] = Field(
        None, description="items the model has never seen, each {<item key>: id, item_text: text}: ranked with the "
                          "rest from their text (models trained with data.text)")
    variant: Any = None

    def check(self, user_key: str, max_k: int, max_candidates: int, item_key: str | None = None) -> None:
        self.check_fields({user_key})
        if not self.given(user_key):
            raise RequestError(f"body: missing field {user_key!r}")
        if not _is_int(self.k) or not 1 <= self.k <= max_k:
            raise RequestError(f"k: expected an integer in [1, {max_k}], got {self.k!r}")
        for name, ids in (("candidates", self.candidates), ("new_items", self.new_items)):
            if ids is not None and len(ids) > max_candidates:
                raise RequestError(f"{name}: {len(ids)} items, more than {max_candidates}", 413)
        for i, item in enumerate(self.new_items or []):
            if not isinstance(item, dict) or set(item) != {item_key, "item_text"} or not _is_int(item[item_key]) \
                    or not -2**63 <= item[item_key] < 2**63:
                raise RequestError(f"new_items[{i}]: expected {{{item_key!r}: an integer id, 'item_text': its text}}, "
                                   f"got {str(item)[:80]}")


class FeedbackRequest(_Body):
    request_id: Annotated[Any, BeforeValidator(_request_id)] = Field(
        None, validate_default=True, description="the request_id a reply gave")
    reward: Annotated[float, BeforeValidator(_reward)] = Field(1.0, description="a finite number (default 1)")

    def check(self, item_key: str) -> int:
        """The item id the feedback is for."""
        self.check_fields({item_key})
        item = self.value(item_key)
        if not _is_int(item):
            raise RequestError(f"{item_key}: expected an integer item id, got {item!r}")
        return item


def _validation_text(errors: list[dict]) -> tuple[str, int]:
    """One reply for FastAPI's validation errors: the first, as '<field>: <text>', and its status."""
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ())[1:]]  # after 'body'
    if err.get("type") == "json_invalid" or (not loc and err.get("type") == "missing"):
        return "body: not valid JSON", 400
    if not loc:
        return f"body: expected a JSON object, got {type(err.get('input')).__name__}", 422
    return f"{loc[0]}: {str(err.get('msg', '')).removeprefix('Value error, ')}", 422


class _JSONBodies:
    """Every body here is JSON: a request without a JSON content type (``curl -d`` sends a form's) is read as JSON
    instead of reaching the handler as bytes. A plain ASGI middleware: it costs one header scan a request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            given = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if b"json" not in given:
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def install_error_replies(api: FastAPI, counts: dict[str, int]) -> None:
    """4xx replies as ``{"error": ...}`` for what FastAPI refuses itself, each counted in ``counts["rejected"]``;
    bodies read as JSON whatever their content type says."""
    api.add_middleware(_JSONBodies)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        text, status = _validation_text(list(exc.errors()))
        counts["rejected"] += 1
        return JSONResponse({"error": text}, status_code=status)

    @api.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if 400 <= exc.status_code < 500:
            counts["rejected"] += 1
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
