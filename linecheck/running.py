"""How commands find a running `linecheck up`: it writes its resolved settings (the
servers' addresses included) to ``work_dir/service/running.toml`` and its pid beside it;
commands run from the same folder without ``--config`` load that file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from infra.settings import Settings


def service_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "service"


def running_file(work_dir: Path) -> Path:
    return service_dir(work_dir) / "running.toml"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def running_service(work_dir: Path) -> dict[str, Any] | None:
    """{pid, url, config} of the `linecheck up` serving this work dir, None when none runs
    (a file left by one that was killed is ignored)."""
    info_path = service_dir(work_dir) / "running.json"
    try:
        info = json.loads(info_path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(info, dict) or not _pid_alive(int(info.get("pid", 0))):
        return None
    return info


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def settings_toml(settings: Settings) -> str:
    """The settings as TOML, secrets revealed (the file is only readable by its owner)."""
    top: list[str] = []
    sections: list[str] = []
    for name, values in settings.model_dump(mode="json").items():
        if not isinstance(values, dict):
            if values is not None:
                top.append(f"{name} = {_toml_value(values)}")
            continue
        model = getattr(settings, name)
        sections.append(f"\n[{name}]")
        for key, value in values.items():
            field = getattr(model, key)
            if isinstance(field, SecretStr):
                value = field.get_secret_value()
            if value is not None:
                sections.append(f"{key} = {_toml_value(value)}")
    return "\n".join([*top, *sections]) + "\n"


def write_running(settings: Settings, url: str) -> Path:
    folder = service_dir(settings.work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = running_file(settings.work_dir)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(
        "# written by `linecheck up` while it runs: commands in this folder use it\n"
        + settings_toml(settings)
    )
    os.replace(tmp, path)
    info = {"pid": os.getpid(), "url": url, "config": str(path.resolve())}
    (folder / "running.json").write_text(json.dumps(info))
    return path


def clear_running(work_dir: Path) -> None:
    for name in ("running.json", "running.toml", "children.json"):
        (service_dir(work_dir) / name).unlink(missing_ok=True)
