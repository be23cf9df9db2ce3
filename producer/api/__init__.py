"""`quickmig api`: the HTTP API for systems that enqueue and listen (docs/operations.md, "HTTP API").

Above producer.migrations (it validates, enqueues and cancels through the same Producer as
the CLI, so a refusal over HTTP is the CLI's refusal), beside the CLI's views. The server
runs as its own process (`python -m producer.api`); the CLI starts it without importing
it, so a CLI command never pays for loading the web framework.
"""
