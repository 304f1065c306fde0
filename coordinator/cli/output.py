"""How an admin task prints its result: JSON with `--json`, else one sentence for people."""

from __future__ import annotations

import argparse
import json


def print_result(args: argparse.Namespace, data: dict[str, object], text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)
