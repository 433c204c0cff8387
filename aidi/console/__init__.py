"""The platform's web console: datasets, models, training jobs and the personal centre (docs/console.md).

    from aidi.console import ConsoleSettings, create_app
    app = create_app(ConsoleSettings.local())          # what `aidi console` serves on 127.0.0.1

Every Kubernetes read is made with the logged-in user's own credential; the console's own
ServiceAccount is used only to issue and revoke APP KEYs (``appkeys``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConsoleSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `aidi --help` builds every command's parser, and the web stack (aiohttp) costs ~0.5 s.
    if name == "create_app":
        from aidi.console.server import create_app

        return create_app
    if name == "ConsoleSettings":
        from aidi.console.settings import ConsoleSettings

        return ConsoleSettings
    raise AttributeError(name)
