"""``rerankd keys new|revoke|list``: manage the API keys file (the gateway re-reads it on change)."""

from __future__ import annotations

import sys
from pathlib import Path

from server.api.auth import (
    SCOPES,
    append_key,
    hash_key,
    new_key,
    parse_key_file,
    parse_scopes,
    remove_key,
)
from server.settings import load_settings


def add_parser(sub) -> None:
    k = sub.add_parser("keys", help="create, revoke and list API keys (stored hashed)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    n = ksub.add_parser("new", help="make a key, print it once, append its hash to the keys file")
    n.add_argument("name", help="who or what the key is for (unique in the file)")
    n.add_argument("--scopes", required=True, help=f"comma-separated, among {', '.join(sorted(SCOPES))}")
    r = ksub.add_parser("revoke", help="remove a key from the keys file")
    r.add_argument("name")
    ls = ksub.add_parser("list", help="names and scopes in the keys file")
    for p in (n, r, ls):
        p.add_argument("--file", help="keys file (default: security.api_keys_file)")
    k.set_defaults(func=lambda args: run(args, load_settings(args.config)))


def _path(args, settings) -> Path | None:
    path = args.file or settings.security.api_keys_file
    return Path(path) if path else None


def run(args, settings) -> int:
    path = _path(args, settings)
    if args.keys_command == "new":
        scopes = parse_scopes(args.scopes)
        key = new_key()
        digest = hash_key(key)
        if path is None:
            # No file: print the entry for RERANKD_SECURITY_API_KEYS instead.
            from server.api.auth import key_line  # validates name and scopes

            key_line(args.name, digest, scopes)
            print(key)
            print(f"# not stored (no --file, no security.api_keys_file); for RERANKD_SECURITY_API_KEYS:\n"
                  f"# {args.name}:{digest}:{'|'.join(sorted(set(scopes)))}", file=sys.stderr)
            return 0
        append_key(path, args.name, digest, scopes)
        print(key)
        print(f"# key {args.name!r} ({', '.join(sorted(set(scopes)))}) added to {path}; shown only this once. "
              "Callers send it as gRPC metadata 'authorization: Bearer <key>'.", file=sys.stderr)
        return 0
    if path is None:
        print("error: give --file or set security.api_keys_file", file=sys.stderr)
        return 2
    if args.keys_command == "revoke":
        remove_key(path, args.name)
        print(f"key {args.name!r} removed from {path} (refused by running gateways within about a second)")
        return 0
    for key in parse_key_file(path.read_text(), str(path)):
        print(f"{key.name:<24} {' '.join(sorted(key.scopes))}")
    return 0
