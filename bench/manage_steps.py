"""Run several management commands in one interpreter, for bench/run.py.

Each Django start costs seconds on the benchmark machine, and the quick run
has two minutes. The commands are the ordinary ones (`migrate`, `create_org`,
`create_api_key`); one extra step, `__template__`, snapshots the database as a
PostgreSQL template so the next run can clone it instead of migrating.

    python bench/manage_steps.py '[["migrate", "--no-input"], ...]'

Prints what the last command printed (create_api_key: the secret).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path


def snapshot(admin_url: str, template: str, source: str, fingerprint: str) -> None:
    import psycopg
    from django.db import connections

    # CREATE DATABASE ... TEMPLATE needs the source to have no connections.
    connections.close_all()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{template}" TEMPLATE "{source}"')
        conn.execute(f"COMMENT ON DATABASE \"{template}\" IS '{fingerprint}'")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "novakit.settings")
    import django

    django.setup()
    from django.core.management import call_command

    printed = ""
    for argv in json.loads(sys.argv[1]):
        if argv[0] == "__template__":
            snapshot(*argv[1:])
            continue
        buffer = io.StringIO()
        call_command(*argv, stdout=buffer)
        printed = buffer.getvalue()
    sys.stdout.write(printed)


if __name__ == "__main__":
    main()
