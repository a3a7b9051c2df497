"""The application user's security role and field-security profile, as the emulator models them.

A real organization decides what the application user may do through the security roles and
field security profiles an administrator gives it. The emulator keeps one "role" per database
(meta key ``app_user_role``, JSON), changed with the admin action ``POST /_emulator/role``:

- by default every table privilege (``prvCreate``, ``prvRead``, ``prvWrite``, ``prvDelete``,
  ``prvAppend``, ``prvAppendTo``) at Global depth on every table, and no secured column;
- ``{"deny": [{"table": "opportunity", "privilege": "Write"}]}`` takes privileges away;
- ``{"secured": [{"table": "lead", "column": "telephone2", "read": true, "create": false,
  "update": false}]}`` secures a column (``IsSecured``) and gives the user a field permission
  on it with those rights;
- ``{"reset": true}`` goes back to the default.

Privilege names are ``prv<Type><table SchemaName>`` (``prvReadLead``, ``prvWritenew_project``),
except the system user table's, which keep their legacy ``User`` stem (``prvReadUser``).

Only the application user has a role here: every other system user is answered with the
default role (the emulator models no other person's rights).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulators.dynamics.errors import (
    PRIVILEGE_DENIED,
    SECURED_CREATE_MISSING,
    SECURED_UPDATE_MISSING,
    ODataError,
)
from emulators.dynamics.schema import METADATA_NAMESPACE, attribute_metadata_id
from emulators.dynamics.store import read_meta, write_meta

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from sqlalchemy.engine import Connection

    from emulators.dynamics.schema import Table

ROLE_META_KEY = "app_user_role"
PRIVILEGE_TYPES = ("Create", "Read", "Write", "Delete", "Append", "AppendTo")
ALLOWED, NOT_ALLOWED = 4, 0  # field permission values (the field_security_permission_type choice)
_PRIVILEGE_STEMS = {"systemuser": "User"}  # legacy privilege names of the system user table


@dataclass(frozen=True)
class FieldRights:
    """The application user's field permission on one secured column."""

    read: bool = False
    create: bool = False
    update: bool = False


@dataclass
class Role:
    """What the application user may do.

    Attributes:
        denied: ``(table, privilege type)`` pairs the role lacks.
        secured: Secured columns, ``(table, column)`` to the user's rights on them.
    """

    denied: set[tuple[str, str]] = field(default_factory=set)
    secured: dict[tuple[str, str], FieldRights] = field(default_factory=dict)

    def allows(self, table: str, privilege: str) -> bool:
        return (table, privilege) not in self.denied

    def secured_columns(self, table: str) -> frozenset[str]:
        """The secured columns of ``table`` (``IsSecured``)."""
        return frozenset(c for t, c in self.secured if t == table)

    def unreadable(self, table: str) -> frozenset[str]:
        """Secured columns of ``table`` the user may not read (their values read as null)."""
        return frozenset(c for (t, c), rights in self.secured.items() if t == table and not rights.read)

    def to_json(self) -> str:
        return json.dumps(
            {
                "deny": [{"table": t, "privilege": p} for t, p in sorted(self.denied)],
                "secured": [
                    {"table": t, "column": c, "read": r.read, "create": r.create, "update": r.update}
                    for (t, c), r in sorted(self.secured.items())
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Role:
        if not text:
            return cls()
        raw = json.loads(text)
        secured = {
            (s["table"], s["column"]): FieldRights(bool(s["read"]), bool(s["create"]), bool(s["update"]))
            for s in raw.get("secured", [])
        }
        return cls({(d["table"], d["privilege"]) for d in raw.get("deny", [])}, secured)

    def describe(self) -> dict[str, Any]:
        """The role as the admin action answers it."""
        return dict(json.loads(self.to_json()))


# -- privilege names and ids -------------------------------------------------------------------


def privilege_name(table: Table, privilege: str) -> str:
    """``prv<Type><SchemaName>``, e.g. ``prvReadLead`` (``prvReadUser`` for system users)."""
    return f"prv{privilege}{_PRIVILEGE_STEMS.get(table.logical_name, table.schema_name)}"


def privilege_id(table: Table, privilege: str) -> str:
    """A stable ``PrivilegeId`` for one privilege of one table."""
    return str(uuid.uuid5(METADATA_NAMESPACE, f"privilege.{table.logical_name}.{privilege}"))


def privilege_definitions(table: Table) -> list[dict[str, Any]]:
    """The table definition's ``Privileges`` (every depth allowed, as for a user-owned table)."""
    return [
        {
            "CanBeBasic": True,
            "CanBeDeep": True,
            "CanBeGlobal": True,
            "CanBeLocal": True,
            "CanBeEntityReference": False,
            "CanBeParentEntityReference": False,
            "Name": privilege_name(table, kind),
            "PrivilegeId": privilege_id(table, kind),
            "PrivilegeType": kind,
        }
        for kind in PRIVILEGE_TYPES
    ]


# -- the two functions bound to systemuser -----------------------------------------------------


def user_privileges(tables: Iterable[Table], role: Role, business_unit: str, api_root: str) -> dict[str, Any]:
    """The ``RetrieveUserPrivilegesResponse`` body: every privilege the role holds, Global depth."""
    held = [
        {
            "Depth": "Global",
            "PrivilegeId": privilege_id(table, kind),
            "BusinessUnitId": business_unit,
            "PrivilegeName": privilege_name(table, kind),
        }
        for table in tables
        for kind in PRIVILEGE_TYPES
        if role.allows(table.logical_name, kind)
    ]
    return {
        "@odata.context": f"{api_root}/$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse",
        "RolePrivileges": held,
    }


def attribute_privileges(role: Role, api_root: str) -> dict[str, Any]:
    """The ``RetrievePrincipalAttributePrivilegesResponse`` body: the user's field permissions.

    ``AttributeId`` is the column's ``MetadataId``; the rights use the field permission values
    (0 not allowed, 4 allowed).
    """

    def value(flag: bool) -> int:
        return ALLOWED if flag else NOT_ALLOWED

    rights = [
        {
            "AttributeId": attribute_metadata_id(table, column),
            "CanCreate": value(r.create),
            "CanRead": value(r.read),
            "CanUpdate": value(r.update),
            "CanReadUnMasked": NOT_ALLOWED,
        }
        for (table, column), r in sorted(role.secured.items())
    ]
    return {
        "@odata.context": f"{api_root}/$metadata"
        "#Microsoft.Dynamics.CRM.RetrievePrincipalAttributePrivilegesResponse",
        "AttributePrivileges": rights,
    }


# -- enforcement -------------------------------------------------------------------------------


def require(role: Role, table: Table, privilege: str, user_id: str) -> None:
    """Refuse (403) an operation the role has no privilege for, naming the privilege.

    Raises:
        ODataError: 403 ``PrivilegeDenied``.
    """
    if role.allows(table.logical_name, privilege):
        return
    name = privilege_name(table, privilege)
    raise ODataError(
        403,
        PRIVILEGE_DENIED,
        f"Principal user (Id={user_id}, type=8) is missing {name} privilege"
        f" (Id={privilege_id(table, privilege)}) on OTC={table.object_type_code}"
        f" for entity '{table.logical_name}'.",
    )


def check_columns(role: Role, table: Table, columns: Iterable[str], creating: bool) -> None:
    """Refuse (403) setting a secured column the user may not create or update, naming it.

    Raises:
        ODataError: 403 ``AttributePrivilegeCreateIsMissing`` or
            ``AttributePermissionUpdateIsMissingDuringUpdate``.
    """
    if not role.secured:  # the usual case: nothing to look at per column
        return
    for column in columns:
        rights = role.secured.get((table.logical_name, column))
        if rights is None or (rights.create if creating else rights.update):
            continue
        verb, code = ("create", SECURED_CREATE_MISSING) if creating else ("update", SECURED_UPDATE_MISSING)
        raise ODataError(
            403,
            code,
            f"The application user has no {verb} permission on the secured column"
            f" '{column}' of table '{table.logical_name}' (field security); the"
            f" {'create' if creating else 'update'} was not done.",
        )


# -- the admin action --------------------------------------------------------------------------


def read_role(meta: Mapping[str, str]) -> Role:
    """The role stored in ``meta`` (the default role when none is)."""
    return Role.from_json(meta.get(ROLE_META_KEY, ""))


def change_role(conn: Connection, tables: Mapping[str, Table], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``POST /_emulator/role`` (see the module docstring) and store the result.

    ``deny`` and ``secured`` add to the stored role; ``reset`` starts from the default first.

    Raises:
        ValueError: A table, column or privilege the emulator does not know.
    """
    role = Role() if spec.get("reset") else read_role(read_meta(conn))
    for item in spec.get("deny") or []:
        table = _known_table(tables, item)
        privilege = str(item.get("privilege", ""))
        if privilege not in PRIVILEGE_TYPES:
            raise ValueError(f"privilege must be one of {', '.join(PRIVILEGE_TYPES)}, not {privilege!r}")
        role.denied.add((table.logical_name, privilege))
    for item in spec.get("secured") or []:
        table = _known_table(tables, item)
        column = str(item.get("column", "")).lower()
        if column not in table.attributes or column == table.primary_id:
            raise ValueError(f"table {table.logical_name!r} has no column {column!r} that can be secured")
        role.secured[(table.logical_name, column)] = FieldRights(
            bool(item.get("read", False)), bool(item.get("create", False)), bool(item.get("update", False))
        )
    write_meta(conn, ROLE_META_KEY, role.to_json())
    return role.describe()


def _known_table(tables: Mapping[str, Table], item: Any) -> Table:
    if not isinstance(item, dict):
        raise ValueError(f"expected an object with 'table', got {item!r}")
    name = str(item.get("table", "")).lower()
    if name not in tables:
        raise ValueError(f"unknown table {name!r}")
    return tables[name]
