"""The admin token: how every service checks it, and the one `loopline up` makes when none is set.

Admin actions need a token. A stack started without `LOOPLINE_ADMIN_TOKEN` gets a random
one in `<state folder>/admin-token` (mode 0600), passed to serving and the feedback
service in their environment, so that `loopline promote` with the stack's
`LOOPLINE_STATE_DIR` (`loopline status --env`) works without a secret in the
environment, on a command line or in `stack.json`.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

ADMIN_TOKEN_FILE = "admin-token"


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    """Whether the header is the Bearer scheme with exactly `token`, compared in constant time.

    The scheme is required (case-insensitive, RFC 7235): a bare token is refused, so a client
    that sends the secret in some other scheme learns it is wrong instead of being let in.
    """
    scheme, _, given = (authorization or "").partition(" ")
    # Compared whatever the scheme, so a refusal takes the same time for any header.
    matches = hmac.compare_digest(given.encode(), token.encode())
    return matches and scheme.lower() == "bearer"


def stack_admin_token(state_dir: Path) -> str | None:
    """The token `loopline up` generated in this state folder, if it did."""
    try:
        return (Path(state_dir) / ADMIN_TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_stack_admin_token(state_dir: Path) -> str:
    """The state folder's generated token, made now if there is none (readable by its owner only)."""
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = stack_admin_token(state_dir)
        if existing is not None:
            return existing
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # an empty file left by an interrupted write
    with os.fdopen(fd, "w") as f:
        token = secrets.token_urlsafe(32)
        f.write(token + "\n")
    return token
