"""The login wandb would use, looked up without touching the network (for ``target._login``).

wandb's order: ``WANDB_API_KEY`` (the caller's), then ``wandb.login()`` in this process
(``login.session``), then ``~/.netrc`` (``login.netrc``, with Python's own netrc reader as a
fallback), then a key in the setup singleton's settings (``login.setup``).  Each private
lookup is best effort; the ones that could not be made are returned as ``missed`` so a
``LoginRequired`` can say that the lookup, not the user, is what is missing.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from sweep_magic._wandb import surface as _surface


@dataclass(frozen=True)
class SavedLogin:
    api_key: str | None
    missed: tuple = ()  # touch point ids whose lookup could not be made on this wandb


def _setup_settings():
    return importlib.import_module(_surface.SETUP).singleton().settings


def saved_base_url() -> tuple[str | None, bool]:
    """(base URL from wandb's settings, whether the lookup could be made)."""
    try:
        return (_setup_settings().base_url or "").rstrip("/") or None, True
    except Exception:  # noqa: BLE001 - a private lookup that moved: no login found this way
        return None, False


def saved_api_key(base_url: str) -> SavedLogin:
    """The API key wandb has for ``base_url`` from ``wandb.login()`` or ``~/.netrc``."""
    missed = []
    key = None
    try:
        auth = importlib.import_module(_surface.AUTH).session_credentials(host=base_url)
        key = getattr(auth, "api_key", None) or None
    except Exception:  # noqa: BLE001 - a private lookup that moved: named in the surface report
        missed.append("login.session")
    if not key:
        try:
            key = importlib.import_module(_surface.NETRC).read_netrc_auth(host=base_url) or None
        except Exception:  # noqa: BLE001 - not a loss: the file's format is netrc's
            key = _stdlib_netrc(base_url)
    if not key:
        try:
            key = getattr(_setup_settings(), "api_key", None) or None
        except Exception:  # noqa: BLE001 - a private lookup that moved: named in the surface report
            missed.append("login.setup")
    return SavedLogin(api_key=key, missed=tuple(missed))


def _stdlib_netrc(base_url: str) -> str | None:
    import netrc
    from urllib.parse import urlparse

    host = urlparse(base_url).hostname or base_url
    try:
        found = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return found[2] if found else None
