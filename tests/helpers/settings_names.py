"""Which RAGTUNE_* names a deployment file may set: those a Settings field reads."""

from __future__ import annotations

from pydantic import BaseModel

SETTINGS_GROUP_BEING_ADDED = "adapters"  # RAGTUNE_ADAPTERS__*: allowed until Settings has it


def unknown_settings(names) -> list[str]:
    """RAGTUNE_* names that no Settings field reads (nested groups through `__`)."""
    from core.settings import Settings

    bad = []
    for name in sorted(names):
        if not name.startswith("RAGTUNE_"):
            continue
        parts = name[len("RAGTUNE_"):].lower().split("__")
        if parts[0] == SETTINGS_GROUP_BEING_ADDED and parts[0] not in Settings.model_fields:
            continue
        model: type[BaseModel] = Settings
        for i, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                bad.append(name)
                break
            if i < len(parts) - 1:
                nested = field.annotation
                if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                    bad.append(name)
                    break
                model = nested
    return bad
