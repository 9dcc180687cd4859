"""flows.runtime helpers that need no server."""

from __future__ import annotations

from prefect.context import SettingsContext, serialize_context

from flows.runtime import settings_serialized_once


def test_settings_serialized_once_ship_what_prefect_would_serialize(monkeypatch):
    """Inside, every task is shipped the settings Prefect itself would serialize (the same
    dict, computed once), and mutating one shipped copy does not reach the next; outside, the
    caller's settings context is back."""
    before = SettingsContext.get()
    plain = serialize_context()["settings_context"]
    calls = []
    prefects = SettingsContext.serialize
    monkeypatch.setattr(
        SettingsContext, "serialize", lambda self, **kw: calls.append(1) or prefects(self, **kw)
    )
    with settings_serialized_once():
        inside = SettingsContext.get()
        assert inside is not before and inside.settings is before.settings
        first = serialize_context()["settings_context"]
        first["profile"] = "changed by a caller"
        second = serialize_context()["settings_context"]
    assert second == plain and first != plain
    assert len(calls) == 1  # Prefect's own serialization ran once for both tasks
    assert SettingsContext.get() is before
