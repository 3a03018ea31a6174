"""`provision grant/revoke` for a group and for the verifier: the exact bindings and conditions, sent
through the real thin layer (`gcp.iam.Iam`) to stand-ins of the IAP, Resource Manager and IAM admin
policy APIs that are as strict as IAM about versions and etags; then what those policies let a member do,
evaluated with a real CEL interpreter (tests/fixtures/iam.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from google.cloud import compute_v1
from google.iam.v1 import iam_policy_pb2, options_pb2, policy_pb2
from google.type import expr_pb2

from provisioner.cli import main
from provisioner.cloud import apply as deploy
from provisioner.cloud import grants
from provisioner.cloud.gcp.base import Clients
from provisioner.cloud.gcp.iam import Iam
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from tests.fixtures.iam import StrictPolicies, allows

GROUP = Settings(project="acme-prod", zone="us-central1-a", replicas=3)
SINGLE = Settings(project="acme-prod", zone="us-central1-a")
ALICE = "user:alice@example.com"
TUNNEL = "roles/iap.tunnelResourceAccessor"
VIEWER = "roles/compute.viewer"
OS_LOGIN = "roles/compute.osLogin"
ACT_AS = "roles/iam.serviceAccountUser"
PROJECT = "projects/acme-prod"
PROJECT_TUNNEL = "projects/acme-prod/iap_tunnel"
VM_ACCOUNT = "projects/acme-prod/serviceAccounts/pypapo-vm@acme-prod.iam.gserviceaccount.com"
REPLICAS = [
    ("us-central1-a", "pypapo-r-x1z9"),
    ("us-central1-b", "pypapo-r-q7w8"),
    ("us-central1-f", "pypapo-r-k2j4"),
]
OFFICE_HOURS = expr_pb2.Expr(title="office hours", expression="request.time.getHours('Europe/Berlin') < 18")


class GroupCompute:
    """Compute as `grant` and `tunnel` read it: the regional group's managed instances, one instance."""

    def __init__(self, group: list[tuple[str, str]] | None, instance: bool = False) -> None:
        self.group, self.instance = group, instance
        self.policies: dict[str, compute_v1.Policy] = {}

    def list_managed_instances(self, region: str, name: str) -> list[compute_v1.ManagedInstance] | None:
        if self.group is None:
            return None
        return [
            compute_v1.ManagedInstance(
                name=n,
                instance=f"https://www.googleapis.com/compute/v1/projects/acme-prod/zones/{z}/instances/{n}",
            )
            for z, n in self.group
        ]

    def get_instance(self, zone: str, name: str) -> compute_v1.Instance | None:
        return compute_v1.Instance(name=name) if self.instance else None

    def set_instance_member(self, zone: str, name: str, role: str, member: str, *, present: bool) -> bool:
        from provisioner.cloud.gcp import policy

        return policy.with_member(
            self.policies.setdefault(name, compute_v1.Policy()), role, member, present=present
        )


def _unrelated() -> dict[str, dict[str, policy_pb2.Policy]]:
    """What a real project already holds: other members, the same role under someone else's condition,
    the same member under another condition, other roles."""
    iap = policy_pb2.Policy(version=3, etag=b"7")
    iap.bindings.add(role=TUNNEL, members=["group:sre@example.com"])
    iap.bindings.add(role=TUNNEL, members=[ALICE, "user:bo@example.com"], condition=OFFICE_HOURS)
    project = policy_pb2.Policy(version=3, etag=b"41")
    project.bindings.add(role="roles/owner", members=["user:admin@example.com"])
    project.bindings.add(role=VIEWER, members=["group:auditors@example.com"])
    project.bindings.add(role=VIEWER, members=[ALICE], condition=OFFICE_HOURS)
    account = policy_pb2.Policy(version=1, etag=b"3")
    account.bindings.add(role="roles/iam.serviceAccountTokenCreator", members=["user:ci@example.com"])
    return {"iap": {PROJECT_TUNNEL: iap}, "projects": {PROJECT: project}, "iam_admin": {VM_ACCOUNT: account}}


def _cloud(
    compute: GroupCompute, existing: dict[str, dict[str, policy_pb2.Policy]] | None = None
) -> deploy.Cloud:
    existing = existing or {}
    apis = {name: StrictPolicies(dict(existing.get(name, {}))) for name in ("iap", "projects", "iam_admin")}
    iam = Iam(Clients("acme-prod", overrides=apis), progress=None)
    return deploy.Cloud(compute=compute, storage=None, iam=iam)


def _api(cloud: deploy.Cloud, name: str) -> StrictPolicies:
    return cloud.iam.clients.get(name)


def _snapshot(cloud: deploy.Cloud) -> dict[str, dict[str, list[tuple[str, tuple[str, ...], str, str]]]]:
    """Every policy's bindings (role, members, condition title and expression), etags aside."""
    return {
        name: {
            res: sorted(
                (b.role, tuple(b.members), b.condition.title, b.condition.expression) for b in p.bindings
            )
            for res, p in _api(cloud, name).policies.items()
        }
        for name in ("iap", "projects", "iam_admin")
    }


def _grant(cloud: deploy.Cloud, s: Settings, role: str, *, present: bool = True, member: str = ALICE) -> int:
    return deploy.grant(cloud, s, member, role, present=present, progress=lambda _m: None)


# --- the exact change -----------------------------------------------------------------------------------

REGION_AND_PREFIX = (
    'resource.name.extract("/zones/{zone}/instances/").startsWith("us-central1-")'
    ' && resource.name.extract("/instances/{name}").startsWith("pypapo-r-")'
)
INSTANCES = (
    'resource.type == "compute.googleapis.com/Instance"'
    ' && resource.name.extract("/instances/{name}").startsWith("pypapo-r-")'
)


def test_group_reader_dry_run_is_the_exact_conditional_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy.Cloud, "connect", lambda *a, **k: pytest.fail("a dry run must not connect"))
    result = CliRunner().invoke(
        main,
        [
            "grant",
            "alice@example.com",
            "--role",
            "reader",
            "--project",
            "acme-prod",
            "--zone",
            "us-central1-a",
            *("--replicas", "3", "--dry-run", "--output", "json"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["deployment"], doc["policy_version"]) == ("group", 3)
    assert doc["bindings"] == [
        {
            "action": "add",
            "resource_type": "iap_tunnel",
            "resource": PROJECT_TUNNEL,
            "role": TUNNEL,
            "members": [ALICE],
            "condition": {
                "title": "pypapo pypapo index port",
                "description": "IAP tunnel to the pypapo group's instances, port 3333 only (pypapo)",
                "expression": f"destination.port == 3333 && {REGION_AND_PREFIX}",
            },
        },
        {
            "action": "add",
            "resource_type": "project",
            "resource": PROJECT,
            "role": VIEWER,
            "members": [ALICE],
            "condition": {
                "title": "pypapo pypapo group (read)",
                "description": "read the pypapo group and its instances only (managed by pypapo)",
                "expression": (
                    'resource.name == "projects/acme-prod/regions/us-central1/instanceGroupManagers/pypapo"'
                    f" || ({INSTANCES})"
                ),
            },
        },
    ]


def test_group_verifier_dry_run_text_shows_each_binding_and_its_condition() -> None:
    result = CliRunner().invoke(
        main,
        [
            "revoke",
            "ops@example.com",
            "--role",
            "verifier",
            "--project",
            "acme-prod",
            "--zone",
            "us-central1-a",
            *("--replicas", "2", "--dry-run"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "revoke verifier (dry run: nothing sent, no credentials used):"
    assert lines[1:9] == [
        f"  - {TUNNEL} for user:ops@example.com on iap_tunnel {PROJECT_TUNNEL}",
        f"      condition: 'pypapo pypapo ssh': destination.port == 22 && {REGION_AND_PREFIX}",
        f"  - {OS_LOGIN} for user:ops@example.com on project {PROJECT}",
        f"      condition: 'pypapo pypapo os login': {INSTANCES}",
        f"  - {VIEWER} for user:ops@example.com on project {PROJECT}",
        f"      condition: 'pypapo pypapo verify (read)': {INSTANCES}",
        f"  - {ACT_AS} for user:ops@example.com on service_account {VM_ACCOUNT.rsplit('/', 1)[1]}",
        "      condition: none",
    ]
    assert "roles/compute.osLoginExternalUser" in lines[9]


def test_single_vm_verifier_is_port_22_on_this_instance_and_os_login_on_it() -> None:
    changes = grants.grant_changes(SINGLE, "ops@example.com", "verifier")
    assert [
        (c.resource_type, c.resource, c.role, c.condition and c.condition.expression) for c in changes
    ] == [
        (
            "iap_tunnel_instance",
            "projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo",
            TUNNEL,
            "destination.port == 22",
        ),
        ("instance", "us-central1-a/pypapo", OS_LOGIN, None),
        (
            "project",
            PROJECT,
            VIEWER,
            'resource.type == "compute.googleapis.com/Instance"'
            ' && resource.name == "projects/acme-prod/zones/us-central1-a/instances/pypapo"',
        ),
        ("service_account", "pypapo-vm@acme-prod.iam.gserviceaccount.com", ACT_AS, None),
    ]
    # the reader of a single VM: the instance's tunnel on the index port only, and its own policy
    reader = grants.grant_changes(SINGLE, ALICE, "reader")
    assert [c.condition and c.condition.expression for c in reader] == ["destination.port == 3333", None]


def test_a_single_vm_reader_reaches_the_index_port_and_not_sshd() -> None:
    cloud = _cloud(GroupCompute(None, instance=True))
    assert _grant(cloud, SINGLE, "reader") == 2
    policies = _api(cloud, "iap").policies
    vm = _tunnel_name("us-central1-a", "pypapo")
    assert allows(policies, ALICE, TUNNEL, vm, destination={"port": 3333})
    assert not allows(policies, ALICE, TUNNEL, vm, destination={"port": 22}), "22 is sshd, not the index"


def test_revoking_a_single_vm_reader_also_removes_the_unconditional_grant_of_older_versions() -> None:
    legacy = policy_pb2.Policy(version=1, etag=b"5")
    legacy.bindings.add(role=TUNNEL, members=[ALICE, "group:sre@example.com"])
    vm = _tunnel_name("us-central1-a", "pypapo")
    cloud = _cloud(GroupCompute(None, instance=True), {"iap": {vm: legacy}})
    assert _grant(cloud, SINGLE, "reader", present=False) == 1
    (left,) = _api(cloud, "iap").policies[vm].bindings
    assert (left.role, list(left.members)) == (TUNNEL, ["group:sre@example.com"])
    assert left.condition.expression == ""  # the other member's unconditional grant stays


# --- sent through the thin layer -------------------------------------------------------------------------


def test_group_grant_then_revoke_leaves_every_policy_as_it_was() -> None:
    cloud = _cloud(GroupCompute(REPLICAS), _unrelated())
    before = _snapshot(cloud)
    assert _grant(cloud, GROUP, "reader") == 2
    after = _snapshot(cloud)
    cond = f"destination.port == 3333 && {REGION_AND_PREFIX}"
    added_tunnel = set(after["iap"][PROJECT_TUNNEL]) - set(before["iap"][PROJECT_TUNNEL])
    assert added_tunnel == {(TUNNEL, (ALICE,), "pypapo pypapo index port", cond)}
    assert set(before["iap"][PROJECT_TUNNEL]) <= set(after["iap"][PROJECT_TUNNEL])  # nothing else touched
    assert len(after["projects"][PROJECT]) == len(before["projects"][PROJECT]) + 1
    assert all(p.version == 3 for api in ("iap", "projects") for p in _api(cloud, api).policies.values())
    assert _grant(cloud, GROUP, "reader") == 0  # idempotent: nothing written again
    writes = len(_api(cloud, "iap").writes)
    assert _grant(cloud, GROUP, "reader", present=False) == 2
    assert _snapshot(cloud) == before
    assert len(_api(cloud, "iap").writes) == writes + 1
    assert _grant(cloud, GROUP, "reader", present=False) == 0


def test_verifier_grant_and_revoke_never_touch_the_readers_bindings() -> None:
    cloud = _cloud(GroupCompute(REPLICAS), _unrelated())
    _grant(cloud, GROUP, "reader")
    with_reader = _snapshot(cloud)
    assert _grant(cloud, GROUP, "verifier") == 4
    account = _api(cloud, "iam_admin").policies[VM_ACCOUNT]
    assert [(b.role, list(b.members)) for b in account.bindings] == [
        ("roles/iam.serviceAccountTokenCreator", ["user:ci@example.com"]),
        (ACT_AS, [ALICE]),
    ]
    assert _grant(cloud, GROUP, "verifier", present=False) == 4
    assert _snapshot(cloud) == with_reader


def test_single_vm_verifier_round_trip(tmp_path: Any) -> None:
    compute = GroupCompute(None, instance=True)
    cloud = _cloud(compute, _unrelated())
    before = _snapshot(cloud)
    assert _grant(cloud, SINGLE, "verifier") == 4
    tunnel = _api(cloud, "iap").policies["projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo"]
    (b,) = tunnel.bindings
    assert (b.role, list(b.members), b.condition.expression) == (TUNNEL, [ALICE], "destination.port == 22")
    assert [(x.role, list(x.members)) for x in compute.policies["pypapo"].bindings] == [(OS_LOGIN, [ALICE])]
    assert _grant(cloud, SINGLE, "verifier", present=False) == 4
    after = _snapshot(cloud)
    del after["iap"]["projects/acme-prod/iap_tunnel/zones/us-central1-a/instances/pypapo"]  # left empty
    assert after == before
    assert list(compute.policies["pypapo"].bindings) == []


def test_a_concurrent_edit_is_retried_and_kept() -> None:
    cloud = _cloud(GroupCompute(REPLICAS), _unrelated())
    iap = _api(cloud, "iap")
    real_set = iap.set_iam_policy
    raced = []

    def racing(request: iam_policy_pb2.SetIamPolicyRequest) -> policy_pb2.Policy:
        if not raced:  # someone else writes between our read and our write
            raced.append(True)
            other = iam_policy_pb2.GetIamPolicyRequest(
                resource=request.resource, options=options_pb2.GetPolicyOptions(requested_policy_version=3)
            )
            theirs = iap.get_iam_policy(other)
            theirs.version = 3
            theirs.bindings.add(role="roles/iap.admin", members=["user:late@example.com"])
            real_set(iam_policy_pb2.SetIamPolicyRequest(resource=request.resource, policy=theirs))
        return real_set(request)

    iap.set_iam_policy = racing  # type: ignore[method-assign]
    assert _grant(cloud, GROUP, "reader") == 2
    roles = {(b.role, tuple(b.members)) for b in iap.policies[PROJECT_TUNNEL].bindings}
    assert ("roles/iap.admin", ("user:late@example.com",)) in roles and (TUNNEL, (ALICE,)) in roles


def test_granting_access_to_a_group_that_does_not_exist_names_the_fix() -> None:
    cloud = _cloud(GroupCompute(None))
    with pytest.raises(
        PypapoError, match=r"group pypapo does not exist in us-central1; run `provision create --replicas N`"
    ):
        _grant(cloud, GROUP, "reader")
    assert _api(cloud, "iap").writes == []


def test_a_grant_for_the_other_shape_of_the_same_name_names_the_flag() -> None:
    with pytest.raises(
        PypapoError, match=r"pypapo is a regional group in us-central1, not a single VM: pass"
    ):
        _grant(_cloud(GroupCompute(REPLICAS)), SINGLE, "reader")
    with pytest.raises(
        PypapoError, match=r"pypapo is a single VM in us-central1-a, not a group: drop --replicas"
    ):
        _grant(_cloud(GroupCompute(None, instance=True)), GROUP, "verifier")
    with pytest.raises(
        PypapoError, match=r"instance pypapo does not exist in us-central1-a; run `provision create`"
    ):
        _grant(_cloud(GroupCompute(None)), SINGLE, "verifier")


# --- what the granted policies let a member do ----------------------------------------------------------


def _tunnel_name(zone: str, name: str) -> str:
    return f"projects/acme-prod/iap_tunnel/zones/{zone}/instances/{name}"


def test_a_reader_reaches_every_replica_on_the_index_port_and_nothing_else() -> None:
    cloud = _cloud(GroupCompute(REPLICAS))
    _grant(cloud, GROUP, "reader")
    policies = _api(cloud, "iap").policies

    def can(member: str, resource: str, port: int) -> bool:
        return allows(policies, member, TUNNEL, resource, destination={"port": port})

    for zone, name in REPLICAS:
        assert can(ALICE, _tunnel_name(zone, name), 3333), name
        assert not can(ALICE, _tunnel_name(zone, name), 22), f"{name}:22 is sshd, not the index"
    assert not can(ALICE, _tunnel_name("us-central1-a", "billing-db"), 3333)  # another VM in the project
    assert not can(ALICE, _tunnel_name("us-central1-a", "pypapo-builder-20261201-030000"), 3333)
    assert not can(ALICE, _tunnel_name("europe-west1-b", "pypapo-r-x1z9"), 3333)  # another region
    assert not can("user:mallory@example.com", _tunnel_name(*REPLICAS[0]), 3333)
    # the reader can read the instances gcloud looks up before it tunnels, and no other instance
    project = _api(cloud, "projects").policies
    instance = "compute.googleapis.com/Instance"
    for zone, name in REPLICAS:
        assert allows(
            project,
            ALICE,
            VIEWER,
            f"projects/acme-prod/zones/{zone}/instances/{name}",
            resource_type=instance,
        )
    assert not allows(
        project,
        ALICE,
        VIEWER,
        "projects/acme-prod/zones/us-central1-a/instances/billing-db",
        resource_type=instance,
    )


def test_a_verifier_reaches_sshd_of_every_replica_and_not_the_index() -> None:
    cloud = _cloud(GroupCompute(REPLICAS))
    _grant(cloud, GROUP, "verifier")
    policies = _api(cloud, "iap").policies
    for zone, name in REPLICAS:
        assert allows(policies, ALICE, TUNNEL, _tunnel_name(zone, name), destination={"port": 22})
        assert not allows(policies, ALICE, TUNNEL, _tunnel_name(zone, name), destination={"port": 3333})
    assert not allows(
        policies, ALICE, TUNNEL, _tunnel_name("us-central1-a", "billing-db"), destination={"port": 22}
    )


# --- end to end: a group created over the Compute double ------------------------------------------------


def test_a_reader_of_a_created_group_tunnels_to_each_healthy_instance_and_the_lb_url_is_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`create --replicas 3` over the groups double, then what a reader does: `grant` (the real policies
    evaluated for the instances the group really made), `provision tunnel`'s choice (the group's
    healthy instances, through the real thin layer) and `client-config --via lb` (the LB's address)."""
    from provisioner.access import tunnel
    from provisioner.cli import access
    from provisioner.cloud.gcp import base
    from tests.cloud.test_group_deploy import create, group_cloud

    made, engine = group_cloud()
    create(made)
    cloud = _cloud(made.compute)
    assert _grant(cloud, GROUP, "reader") == 2
    targets = tunnel.GroupTargets(GROUP, made.compute.list_managed_instances)()
    assert sorted((t.instance, t.zone) for t in targets) == sorted(
        (m.name, m.zone) for m in engine.group_instances()
    )
    assert len({t.zone for t in targets}) == 3
    policies = _api(cloud, "iap").policies
    for t in targets:
        assert allows(policies, ALICE, TUNNEL, _tunnel_name(t.zone, t.instance), destination={"port": 3333})
        assert not allows(policies, ALICE, TUNNEL, _tunnel_name(t.zone, t.instance), destination={"port": 22})
    monkeypatch.setattr(base, "Clients", lambda project: engine.clients())
    ip, _reachable = access._lb_address(GROUP)
    assert ip == engine.addresses["pypapo-ilb"].address
