"""The `suanli` command, the coordinator's client for enterprises and auditors.

It imports only `shared/` (never the server's modules), so what a client trusts rests on
`shared/` alone: `api` speaks the HTTP API, `units` parses what people type, `render`
prints for people, `cli` ties them to the command line.
"""
