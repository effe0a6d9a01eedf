"""What a running `edgefn dev` tells the other commands: `<data dir>/dev.json`.

`edgefn dev` writes it once it serves (its URL, its database, its pid) and removes it when it
stops; `edgefn seed` (and other tools) read it to find the local server's database by
`--data-dir`, as `edgefn token` finds its signing key there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE = "dev.json"


def write(data_dir: str | os.PathLike[str], **info: Any) -> Path:
    path = Path(data_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}))
    os.chmod(tmp, 0o600)  # it holds a connection string
    tmp.replace(path)
    return path


def remove(data_dir: str | os.PathLike[str]) -> None:
    path = Path(data_dir) / FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def read(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The running server's record, or None (no file, or its process is gone)."""
    try:
        info: dict[str, Any] = json.loads((Path(data_dir) / FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def database_url(explicit: str | None, data_dir: str | os.PathLike[str]) -> str:
    """The database a command works on: `explicit` (--database-url), else DATABASE_URL, else
    that of the `edgefn dev` running in `data_dir`."""
    from edgefn.cli import CommandError

    dsn = explicit or os.environ.get("DATABASE_URL", "")
    if dsn.strip():
        return dsn
    running = read(data_dir)
    if running and running.get("database_url"):
        return str(running["database_url"])
    raise CommandError(
        f"no database: DATABASE_URL is not set and no `edgefn dev` is running with --data-dir {data_dir} "
        "(start it, or pass --database-url)"
    )
