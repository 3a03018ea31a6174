"""Bucket names and prefixes: one rule each, and every entry point (--repo, --bucket/--prefix, the VM config)
judges them the same."""

from __future__ import annotations

import pytest

from provisioner.appliance.render import ApplianceConfig
from provisioner.cloud import settings
from provisioner.cloud.settings import validate_bucket
from provisioner.errors import PypapoError
from provisioner.repo import location as layout

VALID = ["abc", "my-proj-pypapo", "team_packages", "a" * 63, "pkgs.example.com", ("a" * 63 + ".") * 3 + "ab"]
INVALID = {
    "ab": "wrong length",
    "a" * 64: "is not valid",
    "My-Bucket": "is not valid",
    "-bucket": "is not valid",
    "bucket-": "is not valid",
    "a..b": "is not valid",
    "googbucket": "'goog'",
    "my-google-pkgs": "'google'",
    "192.168.5.4": "IP address",
}


@pytest.mark.parametrize("name", VALID)
def test_valid_bucket_names_are_accepted_everywhere(name: str) -> None:
    assert layout.bucket_name_problem(name) is None
    assert layout.parse_location(f"gs://{name}/team").bucket == name
    validate_bucket(name)
    assert ApplianceConfig(bucket=name).bucket == name


@pytest.mark.parametrize(("name", "reason"), INVALID.items())
def test_invalid_bucket_names_are_refused_everywhere_with_the_reason(name: str, reason: str) -> None:
    assert reason in (layout.bucket_name_problem(name) or "")
    with pytest.raises(ValueError, match=reason):
        layout.parse_location(f"gs://{name}")
    with pytest.raises(PypapoError, match=reason):
        validate_bucket(name)
    with pytest.raises(PypapoError, match=reason):
        ApplianceConfig(bucket=name)


# Each was accepted by one entry point and refused by another before there was one rule.
BAD_PREFIXES = [
    "a~b",
    "team x",
    "team/ä",
    "/lead",
    "trail/",
    "x%2Fy",
    "a//b",
    "team/..",
    "./x",
    "a;b",
    "$(id)",
]
GOOD_PREFIXES = ["team", "team/python", "a.b/c_d-e", "T3am/X"]


def _accepted_by_settings(prefix: str) -> bool:
    try:
        settings.load({"project": "acme-prod", "zone": "us-central1-a", "prefix": prefix}, env={})
    except PypapoError:
        return False
    return True


def _accepted_by_repo(prefix: str) -> bool:
    try:
        layout.parse_location(f"gs://my-bucket/{prefix}")
    except ValueError:
        return False
    return True


def _accepted_by_appliance(prefix: str) -> bool:
    try:
        ApplianceConfig(bucket="my-bucket", prefix=prefix)
    except PypapoError:
        return False
    return True


@pytest.mark.parametrize("prefix", BAD_PREFIXES + GOOD_PREFIXES)
def test_every_entry_point_judges_a_prefix_the_same(prefix: str) -> None:
    expected = prefix in GOOD_PREFIXES
    assert (layout.prefix_problem(prefix) is None) is expected
    assert _accepted_by_settings(prefix) is expected
    assert _accepted_by_repo(prefix) is expected
    assert _accepted_by_appliance(prefix) is expected


def test_gs_url_is_one_formatter_for_bucket_prefix_and_object() -> None:
    assert layout.gs_url("b") == "gs://b"
    assert layout.gs_url("b", "team/x") == "gs://b/team/x"
    assert layout.gs_url("b", "team/x", "simple/p/f.whl") == "gs://b/team/x/simple/p/f.whl"
    assert layout.gs_url("b", "", "simple/p/f.whl") == "gs://b/simple/p/f.whl"
    assert str(layout.parse_location("gs://bkt/team/x")) == "gs://bkt/team/x"
