"""Admin roles as the core decides them: parsing a stored or configured value, and what each role may do."""

from __future__ import annotations

import pytest

from ferryman.core.caller import ANONYMOUS, MASTER, AdminRole, Caller, parse_role, role_allows
from ferryman.errors import ConfigError
from ferryman.settings import settings_from_mapping
from ferryman.store.static_keys import static_grants


@pytest.mark.parametrize(
    ("value", "role"),
    [
        (None, None),
        ("", None),
        ("viewer", AdminRole.VIEWER),
        ("admin", AdminRole.ADMIN),
        (" Admin ", AdminRole.ADMIN),  # as a hand-edited row might hold it
        (AdminRole.VIEWER, AdminRole.VIEWER),
    ],
)
def test_parse_role_reads_every_spelling_of_a_role(value: object, role: AdminRole | None) -> None:
    assert parse_role(value) is role


@pytest.mark.parametrize("value", ["root", "owner", "viewers", "none", 1, True, ["admin"]])
def test_parse_role_refuses_anything_else_naming_the_choices(value: object) -> None:
    with pytest.raises(ValueError, match="viewer, admin"):
        parse_role(value)


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        (None, "GET", False),
        (None, "POST", False),
        (AdminRole.VIEWER, "GET", True),
        (AdminRole.VIEWER, "head", True),
        (AdminRole.VIEWER, "POST", False),
        (AdminRole.VIEWER, "PATCH", False),
        (AdminRole.VIEWER, "PUT", False),
        (AdminRole.VIEWER, "DELETE", False),
        (AdminRole.VIEWER, "OPTIONS", False),  # only the methods known to change nothing
        (AdminRole.ADMIN, "GET", True),
        (AdminRole.ADMIN, "DELETE", True),
        (AdminRole.ADMIN, "PUT", True),
    ],
)
def test_each_role_admits_exactly_its_methods(role: AdminRole | None, method: str, allowed: bool) -> None:
    assert role_allows(role, method) is allowed
    assert Caller(key_alias="k", role=role).may_administer(method) is allowed


def test_the_master_key_is_always_an_admin_and_nobody_else_is_by_default() -> None:
    assert MASTER.role is AdminRole.ADMIN
    assert ANONYMOUS.role is None
    assert Caller(key_alias="plain").role is None


def test_a_config_key_carries_its_role_into_its_grant() -> None:
    settings = settings_from_mapping(
        {
            "keys": [
                {"alias": "ops", "key": "fm-ops-key-for-tests", "role": "viewer"},
                {"alias": "app", "key": "fm-app-key-for-tests"},
            ]
        }
    )
    roles = {grant.alias: grant.role for grant in static_grants(settings.keys).values()}
    assert roles == {"ops": AdminRole.VIEWER, "app": None}


def test_a_config_key_with_an_unknown_role_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"keys\[0\]\.role"):
        settings_from_mapping({"keys": [{"alias": "ops", "key": "fm-ops-key-for-tests", "role": "root"}]})
