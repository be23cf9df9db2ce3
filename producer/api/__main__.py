"""`python -m producer.api [--config FILE] [--addr A] [--port N]`: serve the HTTP API (what
`quickmig api` runs), over HTTPS when `[api] tls_cert` and `tls_key` are set."""
from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from typing import Any

import uvicorn

from producer.api.app import create_app
from workers.model.config import Config, ConfigError, load_config, secret_file_problem


def tls_options(cfg: Config) -> dict[str, Any]:
    """uvicorn's HTTPS options from `[api] tls_cert` / `tls_key`, checked first so that a
    key others may read, a missing file or a key that is not the certificate's is one line
    (exit 2) rather than a traceback from the server; {} for plain HTTP."""
    cert, key = cfg.api.tls_cert, cfg.api.tls_key
    if cert is None or key is None:
        return {}
    try:
        problem = secret_file_problem(key)
    except OSError as e:
        raise ConfigError(f"[api] tls_key {key}: {e.strerror}") from None
    if problem:
        raise ConfigError(f"[api] tls_key {key} {problem}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as e:  # an OSError too: first
        raise ConfigError(f"[api] tls_cert {cert} / tls_key {key} cannot serve HTTPS: {e.reason or e}") from None
    except OSError as e:
        raise ConfigError(f"[api] tls_cert {cert} / tls_key {key}: {e.strerror or e}") from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="quickmig api")
    ap.add_argument("--config", default=None)
    ap.add_argument("--addr", default=None, help="default: [api] addr, else 127.0.0.1")
    ap.add_argument("--port", type=int, default=None, help="default: [api] port, else 8780")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("QUICKMIG_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s quickmig-api: %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        tls = tls_options(cfg)
        app = create_app(cfg)
    except ConfigError as e:
        print(f"quickmig: {e}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.addr or cfg.api.addr, port=args.port or cfg.api.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=5, **tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
