"""The least a coordinator's PostgreSQL role needs, as SQL an operator runs once.

Two roles: an owner that holds the tables (and runs the migrations: any admin command, run as
the owner after an upgrade), and the service role every `serve` process connects as, which may
read and write rows but neither alter a table nor drop or disable a trigger. So a coordinator
host that is taken over still cannot rewrite the ledger or the log: the triggers refusing
UPDATE, DELETE and TRUNCATE belong to the owner.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_role(name: str, flag: str) -> str:
    if not _ROLE.fullmatch(name):
        raise ValueError(
            f"{flag} {name!r}: a role name is lower-case letters, digits and _, "
            "starting with a letter or _"
        )
    return name


def service_grants(service: str, owner: str, schema: str = "public") -> str:
    """The grants `service` needs on the tables `owner` migrated, now and after upgrades."""
    check_role(service, "--role")
    check_role(owner, "--owner")
    check_role(schema, "--schema")
    return f"""\
GRANT USAGE ON SCHEMA {schema} TO {service};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {service};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {service};
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {service};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {service};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}
    GRANT USAGE, SELECT ON SEQUENCES TO {service};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}
    GRANT EXECUTE ON FUNCTIONS TO {service};
"""
