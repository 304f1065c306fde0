"""The `metrics_listen` setting: host:port of the agent's /metrics, loopback unless allowed."""

from __future__ import annotations

import ipaddress

__all__ = ["parse_metrics_listen"]

OFF = ("", "off")


def parse_metrics_listen(
    value: str, allow_remote: bool, error: type[Exception]
) -> tuple[str, int] | None:
    """(host, port) to listen on, or None for "off"; raises `error` naming the setting.

    The endpoint answers anyone who reaches it, so an address other than loopback needs
    metrics_allow_remote = true.
    """
    if value.strip().lower() in OFF:
        return None
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise error(
            f'metrics_listen = "{value}": expected host:port like "127.0.0.1:9400", or "off"'
        )
    if host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise error(
                f'metrics_listen = "{value}": the host must be an IP address or localhost'
            ) from None
        if not address.is_loopback and not allow_remote:
            raise error(
                f'metrics_listen = "{value}" is not a loopback address and /metrics has no '
                "authentication; set metrics_allow_remote = true to serve it there anyway"
            )
    return host, int(port_text)
