"""The `cove` command: one table of verbs, each a plain function taking parsed arguments."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable


def _settings(args):
    from cove.server.config import Settings

    return Settings(data_dir=args.data, database_url=args.database_url or "")


def serve(args) -> int:
    """Start the Hub server."""
    import uvicorn

    from cove.server import create_app

    app = create_app(_settings(args))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "debug")
    return 0


def _hub(args):
    from cove.server.hub import Hub

    return Hub(_settings(args))


def admin_user_create(args) -> int:
    from cove.server import admin

    admin.create_account(_hub(args), args.name, "user", args.fullname or "", args.email)
    print(f"created user {args.name}")
    return 0


def admin_org_create(args) -> int:
    from cove.server import admin

    hub = _hub(args)
    admin.create_account(hub, args.name, "org", args.fullname or "")
    for member in args.member or []:
        admin.add_member(hub, args.name, member)
    print(f"created organisation {args.name}")
    return 0


def admin_org_add(args) -> int:
    from cove.server import admin

    admin.add_member(_hub(args), args.org, args.user, args.role)
    print(f"{args.user} is a member of {args.org} ({args.role})")
    return 0


def admin_token_create(args) -> int:
    from cove.server import admin

    token = admin.create_token(_hub(args), args.user, args.role, args.name)
    print(token)  # the only time the plain token exists; the server keeps its hash
    return 0


def admin_token_list(args) -> int:
    from cove.server import admin

    for name, role, created in admin.list_tokens(_hub(args), args.user):
        print(f"{name}\t{role}\t{created}")
    return 0


def admin_token_revoke(args) -> int:
    from cove.server import admin

    n = admin.revoke_token(_hub(args), args.user, args.name)
    print(f"revoked {n} token(s)")
    return 0


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("COVE_DATA", "./data"),
                   help="data folder (repositories, LFS objects, SQLite database)")
    p.add_argument("--database-url", default=os.environ.get("COVE_DATABASE_URL"),
                   help="SQLAlchemy URL of the metadata database (default: SQLite in --data)")


# verb -> (function, help, argument adder)
VERBS: dict[str, tuple[Callable, str, Callable[[argparse.ArgumentParser], None]]] = {
    "serve": (serve, "run the Hub server", lambda p: (
        p.add_argument("--host", default="127.0.0.1"),
        p.add_argument("--port", type=int, default=8000),
        p.add_argument("--log-level", default="info"),
        _server_options(p),
    )),
    "admin user create": (admin_user_create, "create a user", lambda p: (
        p.add_argument("name"), p.add_argument("--fullname"), p.add_argument("--email"),
        _server_options(p),
    )),
    "admin org create": (admin_org_create, "create an organisation", lambda p: (
        p.add_argument("name"), p.add_argument("--fullname"),
        p.add_argument("--member", action="append", help="a user to add (repeatable)"),
        _server_options(p),
    )),
    "admin org add-member": (admin_org_add, "add a user to an organisation", lambda p: (
        p.add_argument("org"), p.add_argument("user"),
        p.add_argument("--role", default="write", choices=["read", "write", "admin"]),
        _server_options(p),
    )),
    "admin token create": (admin_token_create, "create an access token (printed once)", lambda p: (
        p.add_argument("user"), p.add_argument("--role", default="read", choices=["read", "write"]),
        p.add_argument("--name", default="default"), _server_options(p),
    )),
    "admin token list": (admin_token_list, "list a user's tokens", lambda p: (
        p.add_argument("user"), _server_options(p),
    )),
    "admin token revoke": (admin_token_revoke, "revoke a user's tokens by name", lambda p: (
        p.add_argument("user"), p.add_argument("--name", required=True), _server_options(p),
    )),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cove", description="Cove: a self-hosted Hugging Face.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): sub}
    for verb, (func, help_, add_args) in VERBS.items():
        words = verb.split()
        for i in range(1, len(words)):
            key = tuple(words[:i])
            if key not in groups:
                p = groups[key[:-1]].add_parser(key[-1], help=f"{' '.join(key)} commands")
                groups[key] = p.add_subparsers(dest="_".join(key), metavar="VERB", required=True)
        p = groups[tuple(words[:-1])].add_parser(words[-1], help=help_)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except Exception as e:  # admin errors are the user's to fix: say what, not a traceback
        from cove.server.admin import AdminError
        from cove.server.errors import HubError

        if isinstance(e, (AdminError, HubError)):
            print(f"cove: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
