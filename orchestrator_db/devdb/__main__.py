"""``python -m orchestrator_db.devdb {url,stop,status}``: the private cluster from a shell."""

from __future__ import annotations

import argparse
import logging
import sys

from orchestrator_db.devdb.cluster import EmbeddedPostgres
from orchestrator_db.devdb.errors import DatabaseUnavailable
from orchestrator_db.devdb.server import resolve_server_url
from orchestrator_db.devdb.urls import mask_password
from orchestrator_db.settings import configured_database_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator_db.devdb",
        description="Resolve, stop or inspect the project's PostgreSQL server.",
    )
    parser.add_argument("command", choices=("url", "stop", "status"),
                        help="url: print the server URL (DATABASE_URL if set, else start/reuse the private "
                             "cluster); stop: stop the private cluster; status: describe it")
    parser.add_argument("--data-dir", help="private cluster data directory (default: per project)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    database_url = configured_database_url()
    try:
        embedded = EmbeddedPostgres(args.data_dir)
        if args.command == "url":
            print(resolve_server_url(database_url, embedded=embedded))
        elif args.command == "stop":
            if database_url:
                print("note: DATABASE_URL is set; stopping the private cluster only", file=sys.stderr)
            embedded.stop()
            print(f"stopped ({embedded.data_dir})")
        else:
            st = embedded.status()
            for key, value in st.items():
                print(f"{key}: {value}")
            if st["running"]:
                print(f"url: {mask_password(embedded.url)}")
            return 0 if st["running"] else 3
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
