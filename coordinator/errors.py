"""HTTP errors of the coordinator's API: each has its status; all render as one JSON shape."""

from __future__ import annotations

from shared.errors import SuanliError


class ApiError(SuanliError):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code


def status_of(exc: SuanliError) -> int:
    """The HTTP status a refusal answers with: its own for API errors, 422 for any other
    Suanli error (the request was understood and its content refused)."""
    return exc.status if isinstance(exc, ApiError) else 422


class Unauthenticated(ApiError):
    status = 401
    code = "unauthenticated"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class TooLarge(ApiError):
    status = 413
    code = "too_large"


class Unprocessable(ApiError):
    status = 422
    code = "invalid"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ApiError):
    """A principal sent more requests than its rate allows; it may retry after `retry_after_s`."""

    status = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(detail, code)
        self.retry_after_s = retry_after_s


class NotLeader(ApiError):
    """This coordinator is a standby (or was fenced out): the request belongs to the leader.
    Answered with 307 to the leader when it is known, else 503."""

    status = 503
    code = "not_leader"

    def __init__(self, detail: str, leader: str | None = None) -> None:
        super().__init__(detail)
        self.leader = leader
