"""Every failure leaves the server as OpenAI's error object, never as a stack trace; and API-key checks."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(HTTPException):
    """An error meant for the client: status, OpenAI's error fields, and optional extra headers.

    An HTTPException, so that FastAPI lets it through unchanged where it turns other errors into a generic 400
    (e.g. raised while the request body is read, by the upload size limit).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.body = ErrorBody(message=message, type=type, param=param, code=code)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body.model_dump()}, status_code=self.status_code, headers=self.headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries, so that the schema documents (and schemathesis checks) the error shape."""
    return {status: {"model": ErrorResponse} for status in statuses}


# Starlette's multipart parser refuses a text field over its 1 MB limit with this message, naming no field.
_FIELD_TOO_LARGE = "Part exceeded maximum size"


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message, code = str(exc.detail), codes.get(exc.status_code)
    if exc.status_code == 400 and message.startswith(_FIELD_TOO_LARGE):
        # In practice a known speaker's reference: a 10 s WAV at 44.1 kHz stereo is 1.7 MB as a data URL.
        message += (
            " A text field of the form is over 1 MB: send known_speaker_references[] as 2-10 s of compressed "
            "(mp3, ogg) or 16 kHz mono audio."
        )
        code = "invalid_value"
    # Headers kept: a 405 says which methods are allowed, HEAD too where GET is (the app's HeadAsGet answers it).
    headers = getattr(exc, "headers", None)
    allowed = (headers or {}).get("Allow", "").split(", ")
    if headers and "GET" in allowed and "HEAD" not in allowed:
        headers = {**headers, "Allow": ", ".join([*allowed, "HEAD"])}
    return APIError(exc.status_code, message, code=code, headers=headers).response()


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    # loc is ("body" | "query" | "path", name, ...): the field name is what a client can act on.
    loc = [str(part) for part in first.get("loc", ())[1:]]
    param = loc[0] if loc else None
    message = f"{first.get('msg', 'invalid request')}" + (f": {param}" if param else "")
    if param == "file" and "UploadFile" in message:  # pydantic's words for a text field where a file belongs
        message = "file: send the recording as a file part of the form (curl -F file=@meeting.mp3), not as text"
    return APIError(400, message, param=param, code="invalid_value").response()


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return APIError(500, "Internal server error; see the server log.", type="server_error").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


# Declared on the /v1 routes so that the OpenAPI schema documents the key; KeyChecker is what checks it.
bearer = HTTPBearer(auto_error=False, description="One of the server's API keys (--api-key).")


class KeyChecker:
    """`Authorization: Bearer <key>` against the configured keys; with none configured every request passes.

    Checked by the server's ASGI guard before the body is read, so that no client without a key can upload."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [k.encode() for k in keys]

    def accepts(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        scheme, credentials = get_authorization_scheme_param(authorization)
        given = credentials.encode() if scheme.lower() == "bearer" else b""
        # Compare against every key, without stopping at a match, so timing says nothing about which key matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    @staticmethod
    def refusal() -> APIError:
        return APIError(
            401,
            "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
