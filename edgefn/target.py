"""The one deploy target every deploy file names, and what it implies for the zips.

Lambda `python3.13` on Amazon Linux 2023, arm64 (Graviton). Why (infra/README.md, "The
target", says it at length):

- Amazon Linux 2023 has glibc 2.34. The python3.11 runtime is Amazon Linux 2 (glibc 2.26):
  current aarch64 wheels (psycopg-binary 3.3 needs GLIBC_2.27) do not load there.
- 3.13 rather than 3.12: the same operating system, every locked dependency ships wheels
  for it on both architectures, and AWS supports it about eight months longer.
- arm64 costs 20 % less per GB-second than x86_64, and this code waits on I/O far more than
  it computes. x86_64 is built and checked too: switching is one word in each deploy file.
- SnapStart is not used: our init is a few hundred milliseconds (bench.cold_start
  --end-to-end), and a snapshot would restore open Postgres and Redis connections that the
  servers have long closed, so every restore would reconnect anyway.

serverless.yml, infra/sam/template.yaml, the Dockerfile and the workflows are checked
against these values by tests/infra.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    runtime: str
    python: str
    arch: str
    #: the newest glibc symbol version a shared library may need (the runtime's glibc)
    glibc: tuple[int, int]
    os: str


TARGET = Target(runtime="python3.13", python="3.13", arch="arm64", glibc=(2, 34), os="Amazon Linux 2023")

#: Lambda's architecture name -> the machine name in wheel tags and ELF headers
MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}


def wheel_platforms(arch: str, glibc: tuple[int, int] = TARGET.glibc) -> list[str]:
    """Every manylinux platform tag a wheel may carry to load on the target: glibc 2.17
    (manylinux2014) up to the runtime's own."""
    machine = MACHINES[arch]
    major, newest = glibc
    tags = [f"manylinux_{major}_{minor}_{machine}" for minor in range(newest, 16, -1)]
    return [*tags, f"manylinux2014_{machine}"]
