"""The `suanli` command, the coordinator's client for enterprises and auditors.

It imports only `shared/` (never the server's modules), so what a client trusts rests on
`shared/` alone: `api` speaks the HTTP API (on `shared.http_client`), `units` and
`arguments` parse what people type, `job_file` reads `job submit -f`, `profiles` and `login`
keep and use the user's settings, `completion` writes shell completion, `render` prints for
people, `audit` re-verifies the transparency log, `cli` ties them to the command line.
"""
