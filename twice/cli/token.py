"""``twice token create|list|revoke``: the named bearer tokens of the web service.

Tokens live hashed in the token file (``<data_dir>/tokens.json`` unless ``TWICE_TOKEN_FILE``);
a running service sees a change on its next request, no restart needed.
"""

from __future__ import annotations

import json
import logging
import sys

from twice.options import Options
from twice.web.auth import ROLES, TokenFile

from .commands import help_for

LOG = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "token",
        help=help_for("token"),
        description="Bearer tokens for the web service: each has a name (what the audit trail"
        " shows) and a role: read (search, when reads are closed), write (POST /images,"
        " DELETE /images/<id>), admin (everything). Only a hash of each token is stored.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a token and print it once")
    create.add_argument("name", help="who or what uses it, e.g. crawler or alice")
    create.add_argument("--role", choices=ROLES, default="write", help="what it may do (default write)")
    listing = actions.add_parser("list", help="names, roles and dates (never the tokens)")
    listing.add_argument("--json", action="store_true", help="as JSON")
    revoke = actions.add_parser("revoke", help="remove a token: it stops working at once")
    revoke.add_argument("name")
    p.set_defaults(func=run_token)


def run_token(args, options: Options) -> int:
    tokens = TokenFile(options.tokens_path)
    if args.action == "create":
        token = tokens.create(args.name, args.role)
        print(token)
        print(
            f"token {args.name!r} (role {args.role}) saved in {tokens.path}: copy it now, it is not shown"
            f" again. Send it as: Authorization: Bearer <token>",
            file=sys.stderr,
        )
    elif args.action == "list":
        rows = [{"name": t.name, "role": t.role, "created_at": t.created_at} for t in tokens.tokens()]
        if args.json:
            print(json.dumps(rows, indent=1))
        elif not rows:
            print(f"no tokens in {tokens.path}", file=sys.stderr)
        for row in [] if args.json else rows:
            print(f"{row['name']:24} {row['role']:6} {row['created_at']}")
    else:
        gone = tokens.revoke(args.name)
        print(f"revoked token {gone.name!r} (role {gone.role})", file=sys.stderr)
    return 0
