"""`quickmig api`: registered through the `quickmig.commands` entry point, so the CLI loads
the web framework only in the process that serves (it replaces itself with
`python -m producer.api`), and `quickmig api token` mints a token without a server."""
from __future__ import annotations

import os
import sys

from producer.api import auth


def cmd_serve(args) -> int:
    argv = [sys.executable, "-m", "producer.api"]
    for flag in ("config", "addr", "port"):
        if getattr(args, flag, None) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    os.execv(sys.executable, argv)
    return 0  # not reached: the server runs in this process's place


def cmd_token(args) -> int:
    scopes = [s for s in args.scopes.split(",") if s]
    bad = [s for s in scopes if s not in auth.SCOPES]
    if not scopes or bad:
        print(f"quickmig: --scopes takes a comma-separated list of {', '.join(auth.SCOPES)}", file=sys.stderr)
        return 2
    if not args.name.replace("-", "").replace("_", "").isalnum():
        print("quickmig: a token name is letters, digits, - and _", file=sys.stderr)
        return 2
    token = auth.new_token()
    print(f"# add to the credentials file; give the caller the token, keep no other copy:\n"
          f"# token: {token}\n" + auth.token_entry(args.name, token, scopes))
    return 0


def register(sub, common) -> None:
    a = sub.add_parser("api", parents=[common], help="serve the HTTP API (docs/operations.md, HTTP API)")
    a.add_argument("--addr", default=None, help="default: [api] addr, else 127.0.0.1 (loopback only)")
    a.add_argument("--port", type=int, default=None, help="default: [api] port, else 8780")
    a.set_defaults(func=cmd_serve)
    asub = a.add_subparsers(dest="api_command")
    t = asub.add_parser("token", parents=[common], help="mint a bearer token: prints it and its credentials entry")
    t.add_argument("name", help="who holds it (recorded as the requester of what it asks for)")
    t.add_argument("--scopes", default="read", help="comma-separated: read, migrate, admin (default read)")
    t.set_defaults(func=cmd_token)
