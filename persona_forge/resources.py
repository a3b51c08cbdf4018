"""Where the project's own data lives: prompts/, recipes/ and corpora/.

In a source checkout (or an editable install) they sit beside the package; a wheel carries
them inside it as persona_forge/_data/<kind>.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """The folder for `kind` ("prompts", "recipes" or "corpora")."""
    bundled = _PACKAGE_DIR / "_data" / kind
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent / kind
