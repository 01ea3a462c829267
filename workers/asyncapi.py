"""The AsyncAPI document of the worker, as FastStream generates it, for integrating teams."""

from __future__ import annotations

import json
from typing import Any

from infra.settings import Settings
from schemas.events import FlaggedBoard


def asyncapi_document(settings: Settings) -> dict[str, Any]:
    from workers.inspection_app import create_inspection_app

    spec = create_inspection_app(settings).schema.to_specification()
    doc: dict[str, Any] = json.loads(spec.to_json())
    # The handler takes the raw bytes (it validates them itself, so that bad input can be
    # dead-lettered), which FastStream documents as a binary payload: document the
    # FlaggedBoard contract the bytes are validated against instead.
    schema = FlaggedBoard.model_json_schema(ref_template="#/components/schemas/{model}")
    components = doc["components"]["schemas"]
    components.update(schema.pop("$defs", {}))
    components["FlaggedBoard"] = schema
    for name in [n for n in components if n.endswith(":Message:Payload")]:
        del components[name]
        for message in doc["components"]["messages"].values():
            if message["payload"].get("$ref") == f"#/components/schemas/{name}":
                message["payload"] = {"$ref": "#/components/schemas/FlaggedBoard"}
    return doc
