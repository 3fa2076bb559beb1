"""Serve a study database through Optuna's gRPC storage proxy, for very many workers.

Workers then use ``storage.url=grpc://HOST:PORT`` (``TuningConfig(storage="grpc://...")``)
instead of each holding its own database connections; the proxy holds one storage and
caches reads. Needs the ``grpc`` extra (``pip install -e ".[grpc]"``).

    python scripts/grpc_proxy.py postgresql://autoquant@db.internal/studies --port 13000

The database password comes from AUTOQUANT_STORAGE_PASSWORD(_FILE), as for workers.
"""

from __future__ import annotations

import argparse
import logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage", help="the database URL (postgresql://..., journal:///...)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=13000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from optuna.storages import run_grpc_proxy_server

    from autoquant.storage import mask_url, open_storage

    storage = open_storage(args.storage)
    logging.info(
        "serving %s at grpc://%s:%d (Ctrl-C stops)", mask_url(args.storage), args.host, args.port
    )
    run_grpc_proxy_server(storage, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
