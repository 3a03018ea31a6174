"""Cloud Storage bucket names: one rule, and every entry point (--repo, --bucket, the VM config) uses it."""

from __future__ import annotations

import pytest

from provisioner import layout
from provisioner.errors import PypapoError
from provisioner.render import ApplianceConfig
from provisioner.settings import validate_bucket

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
