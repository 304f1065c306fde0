"""The coordinator's HTTP layer: the app (`app.make_app`), the one error mapping (`errors`),
body reading (`bodies`), thin handlers per resource and the route table both the router and
the OpenAPI document are built from (`routes`)."""
