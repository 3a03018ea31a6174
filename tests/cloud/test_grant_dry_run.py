"""`provision grant/revoke --dry-run`: the exact policy change, with no credentials and no network."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from provisioner.cli import main

WHERE = ["--project", "acme-prod", "--zone", "us-central1-a"]
JSON = ["--dry-run", "--output", "json"]


@pytest.fixture(autouse=True)
def _no_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.cloud import apply

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run must not connect to Google Cloud")

    monkeypatch.setattr(apply.Cloud, "connect", refuse)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)


def test_grant_reader_dry_run_prints_both_bindings() -> None:
    result = CliRunner().invoke(main, ["grant", "alice@example.com", "--role", "reader", *WHERE, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "grant reader (dry run: nothing sent, no credentials used):\n"
        "  + roles/iap.tunnelResourceAccessor for user:alice@example.com on iap_tunnel_instance"
        " projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo\n"
        "      condition: 'pypapo pypapo index port': destination.port == 3333\n"
        "  + roles/compute.viewer for user:alice@example.com on instance us-central1-a/pypapo\n"
        "      condition: none\n"
    )


def test_revoke_publisher_dry_run_as_json() -> None:
    result = CliRunner().invoke(
        main,
        [
            "revoke",
            "serviceAccount:ci@acme-prod.iam.gserviceaccount.com",
            "--role",
            "publisher",
            *WHERE,
            *JSON,
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["kind"] == "pypapo-iam-change" and doc["operation"] == "revoke"
    assert doc["bindings"] == [
        {
            "action": "remove",
            "resource_type": "bucket",
            "resource": "acme-prod-pypapo",
            "role": "roles/storage.objectUser",
            "members": ["serviceAccount:ci@acme-prod.iam.gserviceaccount.com"],
            "condition": None,
        }
    ]


def test_a_bad_member_is_one_line_even_in_a_dry_run() -> None:
    result = CliRunner().invoke(main, ["grant", "alice", "--role", "reader", *WHERE, "--dry-run"])
    assert result.exit_code == 1
    assert result.output.startswith("error: member 'alice' is not an IAM principal")
    assert len(result.output.strip().splitlines()) == 1
