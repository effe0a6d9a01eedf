"""What the REST API's roles may do, read from the catalog, and the checked-in allow-list it
is compared with (`privileges.toml` beside this file).

`snapshot(conn)` lists, for `anon` and `authenticated` (PUBLIC's grants included, through
`has_*_privilege`), every privilege on every schema, table, view, column, sequence and
function of every non-system schema; every row level security policy; every table there
without row level security; every default privilege that would hand future objects to the
API roles; and the extensions installed there. Objects that belong to an extension are the
extension's and are listed once, as the extension.

`AllowList.load()` reads the allow-list, in which every entry carries its reason, and
`AllowList.expected()` expands it into the same facts. A difference either way fails
`test_privileges.py`, which prints the entries to add (`render`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALLOW_LIST = Path(__file__).with_name("privileges.toml")
API_ROLES = ("anon", "authenticated")

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
RELATION_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "f": "foreign table"}

#: (object, role, privilege): "table public.profiles", "authenticated", "SELECT"
Grant = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Policy:
    table: str
    name: str
    command: str
    roles: tuple[str, ...]
    permissive: bool
    using: str | None
    check: str | None


@dataclass
class Snapshot:
    grants: set[Grant] = field(default_factory=set)
    policies: set[Policy] = field(default_factory=set)
    #: tables of an exposed schema without row level security
    no_rls: set[str] = field(default_factory=set)
    #: (extension, schema)
    extensions: set[tuple[str, str]] = field(default_factory=set)


def normalize(expr: str | None) -> str | None:
    """A policy expression as pg_get_expr prints it, whitespace collapsed."""
    return None if expr is None else re.sub(r"\s+", " ", expr).strip()


# Non-system schemas. A schema the API roles cannot even use is still listed: a single
# `grant usage` would expose whatever it holds.
SCHEMAS_SQL = """
select n.oid from pg_catalog.pg_namespace n
 where n.nspname not in ('pg_catalog', 'information_schema')
   and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
"""
_NOT_EXTENSION = """
not exists (select 1 from pg_catalog.pg_depend d
             where d.classid = '{catalog}'::regclass and d.objid = {oid} and d.deptype = 'e')
"""
#: the relation `c` / function `p` is ours, not an extension's
OURS_CLASS = _NOT_EXTENSION.format(catalog="pg_catalog.pg_class", oid="c.oid")
OURS_PROC = _NOT_EXTENSION.format(catalog="pg_catalog.pg_proc", oid="p.oid")


async def snapshot(conn: Any) -> Snapshot:
    """The API roles' privileges in the database `conn` is connected to (as a superuser)."""
    snap = Snapshot()
    for role in API_ROLES:
        cur = await conn.execute(
            f"select 'schema ' || quote_ident(n.nspname), p from pg_catalog.pg_namespace n,"
            f" unnest(array['USAGE', 'CREATE']) p"
            f" where n.oid in ({SCHEMAS_SQL}) and has_schema_privilege(%s, n.oid, p)",
            (role,),
        )
        snap.grants |= {(obj, role, priv) for obj, priv in await cur.fetchall()}

        cur = await conn.execute(
            f"select c.relkind::text, format('%%I.%%I', n.nspname, c.relname), p"
            f" from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace,"
            f" unnest(%s::text[]) p"
            f" where n.oid in ({SCHEMAS_SQL}) and c.relkind in ('r', 'p', 'v', 'm', 'f')"
            f" and {OURS_CLASS}"
            f" and has_table_privilege(%s, c.oid, p)",
            (list(TABLE_PRIVILEGES), role),
        )
        snap.grants |= {(f"{RELATION_KINDS[kind]} {name}", role, priv) for kind, name, priv in await cur.fetchall()}

        # column privileges that the table-level ones do not already give
        cur = await conn.execute(
            f"select format('%%I.%%I.%%I', n.nspname, c.relname, a.attname), p"
            f" from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            f" join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped,"
            f" unnest(%s::text[]) p"
            f" where n.oid in ({SCHEMAS_SQL}) and c.relkind in ('r', 'p', 'v', 'm', 'f')"
            f" and {OURS_CLASS}"
            f" and has_column_privilege(%s, c.oid, a.attnum, p) and not has_table_privilege(%s, c.oid, p)",
            (list(COLUMN_PRIVILEGES), role, role),
        )
        snap.grants |= {(f"column {name}", role, priv) for name, priv in await cur.fetchall()}

        cur = await conn.execute(
            f"select format('%%I.%%I', n.nspname, c.relname), p"
            f" from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace,"
            f" unnest(%s::text[]) p"
            f" where n.oid in ({SCHEMAS_SQL}) and c.relkind = 'S'"
            f" and {OURS_CLASS}"
            f" and has_sequence_privilege(%s, c.oid, p)",
            (list(SEQUENCE_PRIVILEGES), role),
        )
        snap.grants |= {(f"sequence {name}", role, priv) for name, priv in await cur.fetchall()}

        cur = await conn.execute(
            f"select format('%%I.%%I(%%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)),"
            f" p.prosecdef"
            f" from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            f" where n.oid in ({SCHEMAS_SQL})"
            f" and {OURS_PROC}"
            f" and has_function_privilege(%s, p.oid, 'EXECUTE')",
            (role,),
        )
        # a SECURITY DEFINER function runs with its owner's rights: listed as such, so its
        # entry has to say why that is safe
        snap.grants |= {
            (f"{'definer function' if definer else 'function'} {name}", role, "EXECUTE")
            for name, definer in await cur.fetchall()
        }

        # default privileges that would give objects created later to the role
        cur = await conn.execute(
            "select coalesce(n.nspname, '*'), d.defaclobjtype::text, pg_get_userbyid(d.defaclrole), a.privilege_type"
            " from pg_catalog.pg_default_acl d left join pg_catalog.pg_namespace n on n.oid = d.defaclnamespace,"
            " aclexplode(d.defaclacl) a"
            " where a.grantee = 0 or a.grantee = (select oid from pg_catalog.pg_roles where rolname = %s)",
            (role,),
        )
        snap.grants |= {
            (f"default {kind} in {schema} by {owner}", role, priv) for schema, kind, owner, priv in await cur.fetchall()
        }

    cur = await conn.execute(
        f"select format('%I.%I', n.nspname, c.relname), pol.polname, pol.polcmd::text,"
        f" coalesce((select array_agg(r.rolname::text order by r.rolname) from pg_catalog.pg_roles r"
        f"           where r.oid = any (pol.polroles)), array['public']),"
        f" pol.polpermissive, pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),"
        f" pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid)"
        f" from pg_catalog.pg_policy pol join pg_catalog.pg_class c on c.oid = pol.polrelid"
        f" join pg_catalog.pg_namespace n on n.oid = c.relnamespace where n.oid in ({SCHEMAS_SQL})"
    )
    commands = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
    for table, name, cmd, roles, permissive, using, check in await cur.fetchall():
        snap.policies.add(
            Policy(table, name, commands[cmd], tuple(roles), permissive, normalize(using), normalize(check))
        )

    cur = await conn.execute(
        f"select format('%I.%I', n.nspname, c.relname)"
        f" from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
        f" where n.oid in ({SCHEMAS_SQL}) and c.relkind in ('r', 'p') and not c.relrowsecurity"
        f" and {OURS_CLASS}"
    )
    snap.no_rls = {name for (name,) in await cur.fetchall()}

    cur = await conn.execute(
        f"select e.extname, n.nspname from pg_catalog.pg_extension e"
        f" join pg_catalog.pg_namespace n on n.oid = e.extnamespace where n.oid in ({SCHEMAS_SQL})"
    )
    snap.extensions = {(name, schema) for name, schema in await cur.fetchall()}
    return snap


# -- the allow-list ------------------------------------------------------------------------


class AllowListError(ValueError):
    pass


@dataclass
class AllowList:
    grants: list[dict[str, Any]]
    policies: list[dict[str, Any]]
    no_rls: list[dict[str, Any]]
    extensions: list[dict[str, Any]]
    #: table -> the columns that make a row a user's (empty: data everyone may read)
    owners: dict[str, list[str]]

    @classmethod
    def load(cls, path: Path = ALLOW_LIST) -> AllowList:
        doc = tomllib.loads(path.read_text())
        allow = cls(
            grants=doc.get("grant", []), policies=doc.get("policy", []), no_rls=doc.get("no_rls", []),
            extensions=doc.get("extension", []), owners=doc.get("owners", {}),
        )  # fmt: skip
        for kind, entries in (("grant", allow.grants), ("policy", allow.policies), ("no_rls", allow.no_rls),
                              ("extension", allow.extensions)):
            for entry in entries:
                if not str(entry.get("reason", "")).strip():
                    raise AllowListError(f"{path.name}: a [[{kind}]] entry has no reason: {entry}")
        return allow

    def expected_grants(self) -> set[Grant]:
        out: set[Grant] = set()
        for e in self.grants:
            roles = e["roles"] if "roles" in e else [e["role"]]
            objects = [f"column {e['table']}.{c}" for c in e["columns"]] if "columns" in e else [e["object"]]
            out |= {(o, r, p) for o in objects for r in roles for p in e["privileges"]}
        return out

    def expected_policies(self) -> set[Policy]:
        return {
            Policy(p["table"], p["name"], p["command"], tuple(sorted(p["roles"])), p.get("permissive", True),
                   normalize(p.get("using")), normalize(p.get("check")))
            for p in self.policies
        }  # fmt: skip

    def expected_no_rls(self) -> set[str]:
        return {e["table"] for e in self.no_rls}

    def allowed_extensions(self) -> set[tuple[str, str]]:
        return {(e["name"], e["schema"]) for e in self.extensions}


# -- rendering what to add -------------------------------------------------------------------


def _q(s: str | None) -> str:
    return '"' + (s or "").replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_grants(grants: set[Grant]) -> str:
    by_object: dict[tuple[str, str], list[str]] = {}
    for obj, role, priv in sorted(grants):
        by_object.setdefault((obj, role), []).append(priv)
    return "\n".join(
        f"[[grant]]\nobject = {_q(obj)}\nrole = {_q(role)}\nprivileges = [{', '.join(_q(p) for p in privs)}]\n"
        f'reason = "TODO: why {role} needs this"\n'
        for (obj, role), privs in by_object.items()
    )


def render_policies(policies: set[Policy]) -> str:
    out = []
    for p in sorted(policies, key=lambda p: (p.table, p.name)):
        lines = [f"[[policy]]", f"table = {_q(p.table)}", f"name = {_q(p.name)}", f"command = {_q(p.command)}",
                 f"roles = [{', '.join(_q(r) for r in p.roles)}]"]
        if not p.permissive:
            lines.append("permissive = false")
        if p.using is not None:
            lines.append(f"using = {_q(p.using)}")
        if p.check is not None:
            lines.append(f"check = {_q(p.check)}")
        lines.append('reason = "TODO: what this policy lets through, and why"')
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def differences(snap: Snapshot, allow: AllowList) -> list[str]:
    """Everything that differs between the database and the allow-list, as readable lines
    (with the TOML to paste for what the database grants and the list lacks)."""
    problems: list[str] = []
    extra, missing = snap.grants - allow.expected_grants(), allow.expected_grants() - snap.grants
    if extra:
        problems.append(f"granted, but not in {ALLOW_LIST.name} (add with a reason, or revoke):\n{render_grants(extra)}")
    if missing:
        problems.append(f"in {ALLOW_LIST.name}, but not granted (remove the entry): {sorted(missing)}")
    extra_p, missing_p = snap.policies - allow.expected_policies(), allow.expected_policies() - snap.policies
    if extra_p:
        problems.append(f"policies not in {ALLOW_LIST.name}:\n{render_policies(extra_p)}")
    if missing_p:
        problems.append(f"policies in {ALLOW_LIST.name} that the database does not have: {sorted(p.name for p in missing_p)}")
    if snap.no_rls != allow.expected_no_rls():
        problems.append(f"tables without row level security: {sorted(snap.no_rls)}, allowed: {sorted(allow.expected_no_rls())}")
    if not snap.extensions <= allow.allowed_extensions():
        problems.append(f"extensions in exposed schemas not allowed: {sorted(snap.extensions - allow.allowed_extensions())}")
    reachable = {obj.split(" ", 1)[1] for obj, _, _ in snap.grants if obj.split(" ", 1)[0] in ("table", "view")}
    reachable |= {obj.split(" ", 1)[1].rsplit(".", 1)[0] for obj, _, _ in snap.grants if obj.startswith("column ")}
    if reachable != set(allow.owners):
        problems.append(
            f"[owners] must name exactly the tables the API roles can reach: missing {sorted(reachable - set(allow.owners))},"
            f" not reachable {sorted(set(allow.owners) - reachable)}"
        )
    return problems
