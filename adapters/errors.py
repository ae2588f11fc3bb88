"""Why an adapter or a training file was refused: one 422 with its own `code` per failure."""

from __future__ import annotations

from service.errors import APIError

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
