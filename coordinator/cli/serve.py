"""`suanli-coordinator serve`: run the coordinator service, over HTTPS when given a key."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from pathlib import Path

from coordinator.billing import VoucherPolicy, load_voucher_policy
from coordinator.cli.database_flag import DB_HELP, database_flag
from coordinator.config import Settings, load_settings
from coordinator.serving import Listener, serve
from shared.errors import SuanliError


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the coordinator service",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--db", type=database_flag, help=DB_HELP)
    serve.add_argument("--listen", help="HOST:PORT (default from config, 127.0.0.1:8420)")
    serve.add_argument("--config", type=Path, help="coordinator.toml")
    serve.add_argument("--tls-cert", help="PEM certificate chain; serve HTTPS")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.set_defaults(run=cmd_serve)


def _settings_help() -> str:
    lines = ["settings (coordinator.toml, [coordinator] table):"]
    for name, default, help in Settings.describe():
        lines.append(f"  {name} = {default!r}\n      {help}")
    lines.append("\nvoucher policy (coordinator.toml, [vouchers] table):")
    for name, default, help in VoucherPolicy.describe():
        lines.append(f"  {name} = {default!r}\n      {help}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config).with_overrides(
        listen=args.listen, tls_cert=args.tls_cert, tls_key=args.tls_key
    )
    policy = load_voucher_policy(args.config)
    host, _, port = settings.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SuanliError(f"--listen {settings.listen!r} must be HOST:PORT")
    ssl_context = None
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise SuanliError("HTTPS needs both --tls-cert and --tls-key")
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(settings.tls_cert, settings.tls_key)
    elif host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "serving plain HTTP on %s: agents and clients will refuse to send credentials "
            "to it; give --tls-cert and --tls-key",
            host,
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    listener = Listener(host.strip("[]"), int(port), ssl_context)
    return asyncio.run(serve(settings, args.db, policy, listener))
