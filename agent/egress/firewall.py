"""The host side of the egress network: `nft` transactions and IPv4 forwarding."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

NFT_TIMEOUT_S = 10.0
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


class FirewallError(Exception):
    """The host would not take the egress rules; the message says why, for the operator."""


async def apply(script: str, *, check_only: bool = False) -> None:
    """Run one nftables script as a single transaction (all of it or none); `check_only`:
    have the kernel check it without changing anything (`nft -c`)."""
    nft = shutil.which("nft")
    if nft is None:
        raise FirewallError("nft is not installed (Debian: apt-get install nftables)")
    process = await asyncio.create_subprocess_exec(
        nft,
        *(["-c"] if check_only else []),
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(script.encode()), NFT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise FirewallError(f"nft did not finish within {NFT_TIMEOUT_S:g} s") from None
    if process.returncode != 0:
        first = err.decode(errors="replace").strip().splitlines()[:2]
        raise FirewallError(f"nft refused the egress rules: {' '.join(first) or 'no reason'}")


def ensure_forwarding(path: Path = IP_FORWARD) -> None:
    """Turn on IPv4 forwarding, as Docker and netavark do for their bridges."""
    try:
        if path.read_text().strip() != "1":
            path.write_text("1\n")
    except OSError as exc:
        raise FirewallError(f"cannot turn on IPv4 forwarding ({path}): {exc.strerror}") from None
