"""Templates and presets by name: what both the Tasks and the Chats paths resolve.

A route names a template (and maybe a preset); Coder wants the template's id or
active version, and a preset's ``ID`` read from that version's presets, whose
keys are PascalCase on the wire (see reference coder-tasks.md §5-§6).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from service.coder.client import CoderClient
from service.errors import NotFound, PermanentError

API_V2: Final = "/api/v2"
DEFAULT_ORGANIZATION: Final = "default"


@dataclass(frozen=True)
class Template:
    """A template found by name: its id and the version new workspaces get."""

    id: str
    name: str
    active_version_id: str


def path_segment(value: str) -> str:
    """``value`` quoted as one URL path segment."""
    return quote(value, safe="")


async def fetch_template(client: CoderClient, organization: str, name: str) -> Template:
    """``GET /api/v2/organizations/{org}/templates/{name}`` as the client's user.

    An empty ``organization`` means ``default``. ``NotFound`` says, in words for an
    issue comment, that the template is missing or not usable by this account;
    ``PermanentError`` if Coder's answer lacks the id or active version.
    """
    org = organization.strip() or DEFAULT_ORGANIZATION
    path = f"{API_V2}/organizations/{path_segment(org)}/templates/{path_segment(name)}"
    try:
        body = await client.request("GET", path)
    except NotFound:
        words = (f'template "{name}" was not found in Coder organization "{org}", '
                 "or your Coder account cannot use it")
        raise NotFound("coder", words, status=404, public=words,
                       misconfigured="template") from None
    ident = body.get("id") if isinstance(body, dict) else None
    version = body.get("active_version_id") if isinstance(body, dict) else None
    if not isinstance(ident, str) or not ident or not isinstance(version, str) or not version:
        raise PermanentError(
            "coder", f'Coder\'s answer about template "{name}" lacks its id or active version'
        )
    return Template(id=ident, name=name, active_version_id=version)


async def fetch_presets(client: CoderClient, version_id: str) -> list[dict[str, Any]]:
    """The presets of a template version (PascalCase objects; non-objects dropped)."""
    body = await client.request(
        "GET", f"{API_V2}/templateversions/{path_segment(version_id)}/presets"
    )
    return [p for p in body if isinstance(p, dict)] if isinstance(body, list) else []


def choose_preset(presets: list[dict[str, Any]], wanted: str, *, template: str) -> str | None:
    """Pick the preset ``ID`` from Coder's PascalCase preset objects.

    A non-empty ``wanted`` must match a ``Name`` exactly, else ``PermanentError``
    naming the available presets. With ``wanted`` empty, the preset marked
    ``Default: true`` is chosen, or none.
    """
    if wanted:
        for preset in presets:
            if preset.get("Name") == wanted and isinstance(preset.get("ID"), str):
                return str(preset["ID"])
        names = [str(p["Name"]) for p in presets if isinstance(p.get("Name"), str)]
        available = ", ".join(f'"{n}"' for n in names) if names else "none"
        words = (f'preset "{wanted}" does not exist for template "{template}"; '
                 f"available presets: {available}")
        raise PermanentError("coder", words, public=words, misconfigured="preset")
    for preset in presets:
        if preset.get("Default") is True and isinstance(preset.get("ID"), str):
            return str(preset["ID"])
    return None


class TemplateCache:
    """Short-lived memory of template look-ups, shared by every user's backend.

    Every delegation would otherwise fetch the template (for its active version) and
    that version's presets again: two of the five calls per issue. Entries live
    ``ttl`` seconds, so a newly promoted template version is used within a minute.
    Sharing across users is safe: Coder checks the user's access to the version
    when the task is created. Only successful answers are kept.
    """

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, ...], tuple[float, Any]] = {}

    def get(self, key: tuple[str, ...]) -> Any | None:
        """The value stored under ``key`` if it is younger than the TTL."""
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] > self._ttl:
            return None
        return entry[1]

    def put(self, key: tuple[str, ...], value: Any) -> None:
        """Remember ``value`` from now on."""
        self._entries[key] = (self._clock(), value)

    def drop(self, key: tuple[str, ...]) -> bool:
        """Forget ``key``; whether a live entry was there."""
        return self.get(key) is not None and self._entries.pop(key, None) is not None
