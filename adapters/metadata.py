"""What a registration says about its adapter besides the files: its name (part of the engine
name `<tenant>--<name>--v<N>` and of the path under the adapter root, so it is never free text),
its description and the example prompts the router matches queries against."""

from __future__ import annotations

import re

from core.errors import InvalidRequest
from core.settings import AdapterSettings

# No "--": it separates tenant, name and version in the engine name.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._]|-(?!-)){0,63}$")
# The model names a chat request may give that are not adapters.
RESERVED_NAMES = frozenset({"auto"})


def check_metadata(
    name: object,
    description: object,
    examples: object,
    *,
    limits: AdapterSettings,
    base_model_name: str,
) -> list[str]:
    """The examples as a list ([] when none were given); InvalidRequest (400) names a bad field."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'name' is required", code="missing_name", param="name")
    if not ADAPTER_NAME.fullmatch(name) or name in RESERVED_NAMES or name == base_model_name:
        raise InvalidRequest(
            f"invalid adapter name '{name[:80]}': 1-64 letters, digits, '.', '_' and single "
            "'-', starting with a letter or digit, not 'auto' or the base model's name",
            code="invalid_adapter_name",
            param="name",
        )
    if (
        not isinstance(description, str)
        or len(description) > limits.max_example_chars
        or "\x00" in description
    ):
        raise InvalidRequest(
            f"'description' must be a string of at most {limits.max_example_chars} characters, "
            "without NUL",
            code="invalid_description",
            param="description",
        )
    if examples is None:
        return []
    if (
        not isinstance(examples, list)
        or len(examples) > limits.max_examples
        or not all(isinstance(e, str) and 0 < len(e) <= limits.max_example_chars
                   and "\x00" not in e for e in examples)
    ):
        raise InvalidRequest(
            f"'examples' must be a JSON list of at most {limits.max_examples} non-empty strings "
            f"of at most {limits.max_example_chars} characters",
            code="invalid_examples",
            param="examples",
        )
    return examples
