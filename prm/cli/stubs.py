"""Entry points whose issue has not landed yet: each says so and exits non-zero."""

from __future__ import annotations

import sys


def _not_yet(name: str, what: str) -> None:
    print(f"{name}: {what} is not there yet (a later issue builds it).", file=sys.stderr)
    raise SystemExit(1)


def rl() -> None:
    _not_yet("prm-rl", "RL with process rewards")
