"""The one error hierarchy: every business error is an `APIError` that carries its HTTP status,
`type` and `code` (API.md's error shape); service/http_errors.py renders them. Every subclass
lives in this module, so the codes a client can see are listed in one place."""

from __future__ import annotations


class APIError(Exception):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.param = param
        self.status = status or self.status
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(APIError):
    pass


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(APIError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(APIError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(APIError):
    status = 409
    code = "conflict"


class PayloadTooLarge(APIError):
    status = 413
    code = "request_too_large"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str = "other", **kw) -> None:
        super().__init__(message, **kw)
        self.limit = limit  # which of the tenant's limits refused it (the metric's label)


class EngineUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "engine_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kw) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kw)


class UpstreamError(APIError):
    status = 502
    type = "server_error"
    code = "upstream_error"


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_STATUS_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    431: ("invalid_request_error", "headers_too_large"),
}


def status_error_body(status: int, message: str) -> dict:
    type_, code = _STATUS_TYPES.get(status, ("server_error", "internal_error"))
    return error_body(message, type_, code)


# ---- the knowledge base (ingest/) ----

class UnsupportedType(APIError):
    status = 415
    code = "unsupported_file_type"


class UnreadableFile(APIError):
    status = 422
    code = "unreadable_file"


class EmptyFile(APIError):
    status = 422
    code = "empty_document"


class InsufficientStorage(APIError):
    status = 507
    type = "server_error"
    code = "insufficient_storage"


class RetrievalUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "retrieval_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


# ---- the registry and the engine (core/) ----

class RegistryUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "registry_unavailable"

    def __init__(self) -> None:
        super().__init__("the registry database is unavailable; retry shortly",
                         headers={"Retry-After": "5"})


class ModelNotLoaded(UpstreamError):
    """The replica does not hold the model asked for (an adapter another process unloaded, or a
    replica that restarted): the caller may load it and try again."""


# ---- adapters (adapters/): why an adapter or a training file was refused ----

# Every code an AdapterError may carry; tests and API docs enumerate this.
ADAPTER_ERROR_CODES = frozenset(
    {
        # the upload itself
        "invalid_archive",
        "archive_too_large",
        "too_many_files",
        "path_escape",
        "link_in_archive",
        "link_in_folder",
        "unsupported_uri",
        "uri_not_found",
        "adapter_too_large",
        # adapter_config.json
        "missing_config",
        "invalid_config",
        "not_lora",
        "unsupported_task_type",
        "base_model_mismatch",
        "rank_too_high",
        "unsupported_target_modules",
        "dora_not_supported",
        "modules_to_save_not_supported",
        "bias_not_supported",
        "unsupported_lora_feature",
        # adapter_model.safetensors
        "missing_weights",
        "pickle_not_allowed",
        "invalid_weights",
        "tensor_shape_mismatch",
        "unexpected_tensors",
        # served: the engine's answers with and without it are the same (it changes nothing)
        "adapter_has_no_effect",
        # its gate: the evaluation found it worse than the version it was to replace
        "gate_failed",
        # ragtune_training.json (optional: how `ragtune adapters train` trained it)
        "invalid_training_record",
        # the engine
        "engine_rejected_adapter",
        "adapter_not_readable_by_engine",
    }
)


class AdapterError(APIError):
    """A registered adapter that this server will not load; `code` says which rule it broke."""

    status = 422
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str, param: str | None = "file") -> None:
        if code not in ADAPTER_ERROR_CODES:
            raise ValueError(f"unknown adapter error code {code!r}")
        super().__init__(message, code=code, param=param)


class TrainingDataError(APIError):
    """A training file that cannot be read at all (bad JSON on a line, rows of the wrong shape)."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_training_data"

    def __init__(self, message: str, *, param: str | None = "training_file") -> None:
        super().__init__(message, param=param)


EVAL_ERROR_CODES = frozenset(
    {
        "invalid_eval_set",  # a row that is not an item (names the row)
        "unknown_check_kind",  # a check other than contains/not_contains/regex/exact/grammar
        "invalid_grammar",  # the set's Lark grammar does not compile
        "empty_eval_set",  # a set without items
        "unknown_arm",  # an evaluation arm that is not prompt/rag/adapter_rag:<name>/auto
    }
)


class EvalError(APIError):
    """An eval set or an evaluation request that cannot run; `code` says which rule it broke."""

    status = 422
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        if code not in EVAL_ERROR_CODES:
            raise ValueError(f"unknown evaluation error code {code!r}")
        super().__init__(message, code=code, param=param)


# ---- operations (service/backup.py) ----

class BackupError(APIError):
    """A backup that could not be made: `backup_unsupported` (501: a store it cannot capture
    consistently), `backup_busy` (503: files the registry names were deleted while it read them,
    each try), `backup_failed` (500: the registry's dump failed, or a path it cannot hold)."""

    status = 500
    type = "server_error"
    code = "backup_failed"
