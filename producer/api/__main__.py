"""`python -m producer.api [--config FILE] [--addr A] [--port N]`: serve the HTTP API (what
`quickmig api` runs)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from producer.api.app import create_app
from workers.model.config import ConfigError, load_config


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
        app = create_app(cfg)
    except ConfigError as e:
        print(f"quickmig: {e}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.addr or cfg.api.addr, port=args.port or cfg.api.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
