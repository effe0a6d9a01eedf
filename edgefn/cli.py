"""`edgefn`: the operator's command line. Tooling only; never deployed with a function.

Each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; this file only wires them, and imports a module only when its
subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("edgefn.dev", "serve every function locally (embedded services when nothing is configured)"),
    "migrate": ("edgefn.migrate", "apply sql/migrations in order, each once, checksummed"),
    "seed": ("edgefn.seed", "load deterministic demo data"),
    "token": ("edgefn.tokens", "mint a local access token shaped like Supabase's"),
    "openapi": ("edgefn.openapi", "print the OpenAPI document of every function's routes"),
    "config": ("edgefn.config", "the configuration reference, or what a function loads here"),
    "package": ("edgefn.package", "build a reproducible Lambda zip per function"),
    "plans": ("edgefn.plans", "register subscription plans from a TOML file (idempotent upsert)"),
    "webhooks": ("edgefn.webhooks_cli", "webhooks: send a signed test event; replay stored deliveries"),
    "outbox": ("edgefn.outbox_cli", "realtime outbox maintenance: status, dead letters"),
    "bench": ("edgefn.bench_cli", "system benchmark: load, faults, fuzzing; writes bench/report.md with plots"),
}


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit code 1 (no traceback)."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="edgefn", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            try:
                modules[name] = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name == module:
                    print(f"edgefn: '{name}' is not available in this build", file=sys.stderr)
                    return 2
                raise
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except CommandError as exc:
        print(f"edgefn {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m edgefn.cli`: re-enter through the package module, so the CommandError the
    # subcommands raise is the one `main` catches
    from edgefn.cli import main as _main

    raise SystemExit(_main())
