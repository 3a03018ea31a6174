"""`--lb-client CIDR` (`lb_clients`): the VPC ranges that may use a group's internal load balancer, the one
explicit exception to "IAM is the only gate". Validation, the exact firewall request in plan JSON, and
the drift (add, change, remove clients) against the Compute double: the rule and, through the startup
script in the template's metadata, a rolling update that gives NGINX's source wall the same ranges."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.cloud import apply as deploy
from provisioner.cloud import group, group_plan, settings
from provisioner.cloud import plan as planlib
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from tests.cloud.test_group_deploy import _new_image, group_cloud
from tests.cloud.test_group_plan import _existing
from tests.doubles.compute import FakeClock

S = Settings(project="acme-prod", zone="us-central1-a", replicas=3)
POOL = "10.77.0.0/24"  # a Cloud Build private pool's peered range
GKE = "100.64.0.0/14"  # GKE pods in the shared address space
WHERE = ["--project", "acme-prod", "--zone", "us-central1-a"]


def with_clients(*clients: str) -> Settings:
    return settings.load(
        {"project": "acme-prod", "zone": "us-central1-a", "replicas": 3, "lb_clients": clients}
    )


# --- the setting ---------------------------------------------------------------------------------------


def test_flag_env_and_toml_name_the_same_setting(tmp_path: Path) -> None:
    assert with_clients(GKE, POOL, POOL).lb_clients == (POOL, GKE)  # deduplicated, one order
    env = {"PYPAPO_LB_CLIENTS": f" {POOL}, {GKE} ", "PYPAPO_REPLICAS": "2"}
    assert settings.load({"project": "acme-prod", "zone": "us-central1-a"}, env=env).lb_clients == (POOL, GKE)
    toml = tmp_path / "pypapo.toml"
    toml.write_text(f'project = "acme-prod"\nzone = "us-central1-a"\nreplicas = 2\nlb_clients = ["{POOL}"]\n')
    assert settings.load({}, env={}, config=toml).lb_clients == (POOL,)
    # a flag overrides the environment; no flag leaves it alone
    flagged = settings.load({"project": "acme-prod", "zone": "us-central1-a", "lb_clients": (GKE,)}, env=env)
    assert flagged.lb_clients == (GKE,)
    unset = settings.load({"project": "acme-prod", "zone": "us-central1-a", "lb_clients": ()}, env=env)
    assert unset.lb_clients == (POOL, GKE)  # click gives () for a repeatable flag not passed


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0.0.0.0/0", "would let every source use the load balancer, which has no IAM check"),
        ("8.8.8.0/24", "is not private address space"),
        ("172.32.0.0/16", "is not private address space"),  # just outside 172.16.0.0/12
        ("100.128.0.0/10", "is not private address space"),
        ("10.0.0.1/8", "is not an IPv4 network"),  # host bits set: a typo, not a range
        # A private (ULA) IPv6 range is well formed: what is wrong is that the balancer is IPv4 only.
        ("fd20:a:b::/64", "is an IPv6 range, and the internal load balancer pypapo creates is IPv4 only"),
        ("fd00::1/8", "is an IPv6 range"),
        ("::/0", "is an IPv6 range"),
        ("10.0.0.0/8 allow all", "is not an IPv4 network"),
    ],
)
def test_a_public_or_malformed_range_is_one_line(value: str, why: str) -> None:
    with pytest.raises(PypapoError, match=f"--lb-client {value} {why}"):
        with_clients(value)
    result = CliRunner().invoke(
        main, ["plan", "--offline", *WHERE, "--replicas", "3", "--lb-client", POOL, "--lb-client", value]
    )
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: --lb-client {value} {why}")


def test_without_replicas_it_is_refused() -> None:
    result = CliRunner().invoke(main, ["plan", "--offline", *WHERE, "--lb-client", POOL])
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert line == (
        "error: --lb-client needs --replicas N: only a group has the internal load balancer it opens"
        " (a single VM is reached through the IAP tunnel alone)"
    )


def test_the_scheduled_rollout_keeps_the_clients() -> None:
    from provisioner.cli.image import _cli_args

    args = _cli_args(with_clients(POOL, GKE))
    assert [a for a in args if a.startswith("--lb-client")] == [f"--lb-client={POOL}", f"--lb-client={GKE}"]
    argv = shlex.split(" ".join(shlex.quote(a) for a in ["plan", "--offline", *WHERE, *args]))
    result = CliRunner().invoke(main, [*argv, "--output", "json"], env={"PYPAPO_CONFIG": "/dev/null"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["lb_clients"] == [POOL, GKE]


# --- the plan ------------------------------------------------------------------------------------------


def _rule(plan: planlib.Plan) -> planlib.ResourcePlan:
    (rule,) = [r for r in plan.resources if r.name == "pypapo-allow-ilb"]
    return rule


def test_a_live_plan_carries_the_exact_firewall_request() -> None:
    s = with_clients(POOL, GKE)
    script = deploy.startup_script(s)
    plan = planlib.plan_create(s, _existing(s, script=script), startup_script=script)
    assert [(r.kind, r.action) for r in plan.resources if r.action not in planlib.UNCHANGED] == [
        (planlib.Kind.FIREWALL, planlib.Action.CREATE)
    ]
    doc = plan.to_dict()
    (resource,) = [r for r in doc["resources"] if r["name"] == "pypapo-allow-ilb"]
    (step,) = resource["steps"]
    assert step["method"] == "compute.insert_firewall"
    assert step["request"] == {
        "project": "acme-prod",
        "firewallResource": {
            "name": "pypapo-allow-ilb",
            "description": "pypapo: VPC clients of the internal load balancer, to its address and the index"
            " port only",
            "network": "projects/acme-prod/global/networks/default",
            "direction": "INGRESS",
            "disabled": False,
            "priority": 900,
            "sourceRanges": [POOL, GKE],
            "destinationRanges": ["10.128.0.50/32"],  # the forwarding rule's address, nothing else
            "allowed": [{"IPProtocol": "tcp", "ports": ["3333"]}],  # the serving port only, not 22
            "targetServiceAccounts": ["pypapo-vm@acme-prod.iam.gserviceaccount.com"],
        },
    }
    deny = planlib.desired_deny_firewall(s)
    assert step["request"]["firewallResource"]["priority"] < deny.priority  # evaluated before the deny
    forwarding = next(r for r in plan.resources if r.kind is planlib.Kind.FORWARDING_RULE)
    assert group_plan.NO_CLIENTS not in forwarding.notes


def test_offline_the_rule_waits_for_the_address_and_is_never_sent_with_a_placeholder() -> None:
    result = CliRunner().invoke(
        main, ["plan", "--offline", "--output", "json", *WHERE, "--replicas", "3", "--lb-client", POOL]
    )
    assert result.exit_code == 0, result.output
    (rule,) = [r for r in json.loads(result.stdout)["resources"] if r["name"] == "pypapo-allow-ilb"]
    assert rule["action"] == "create" and rule["steps"] == []
    assert rule["spec"]["sourceRanges"] == [POOL]
    assert "create sends this rule as soon as the address is reserved" in rule["notes"][0]
    # without clients: no rule, and the forwarding rule says the balancer serves no one
    bare = planlib.plan_create(S, None, startup_script="x")
    assert not [r for r in bare.resources if r.name == "pypapo-allow-ilb"]
    forwarding = next(r for r in bare.resources if r.kind is planlib.Kind.FORWARDING_RULE)
    assert forwarding.notes == [group_plan.NO_CLIENTS]


def test_the_wall_admits_exactly_the_clients_and_only_in_a_group() -> None:
    assert deploy.allowed_sources(with_clients(POOL)) == (
        planlib.IAP_TCP_RANGE,
        *group.HEALTH_CHECK_RANGES,
        POOL,
    )
    assert f"        {POOL} 1;\n" in deploy.startup_script(with_clients(POOL))
    assert POOL not in deploy.startup_script(S)


def _unit_allows(script: str) -> list[str]:
    """The networks the nginx unit's kernel wall (IPAddressAllow=) admits, as the startup script ships it."""
    allowed: list[str] = []
    for line in script.splitlines():
        if line.startswith("IPAddressAllow="):
            allowed += line.removeprefix("IPAddressAllow=").split()
    return allowed


@pytest.mark.parametrize("replicas", [None, "3"])
def test_the_units_kernel_wall_admits_exactly_what_the_firewall_rules_admit_to_the_port(
    replicas: str | None,
) -> None:
    """One source of the ranges: the allow rules the plan makes for the serving port (IAP; for a group
    the health checkers and the --lb-client ranges) are the unit's IPAddressAllow=, besides loopback."""
    group_flags = ["--replicas", replicas, "--lb-client", POOL] if replicas else []
    result = CliRunner().invoke(main, ["plan", "--offline", "--output", "json", *WHERE, *group_flags])
    assert result.exit_code == 0, result.output
    to_port = {
        source
        for r in json.loads(result.stdout)["resources"]
        if r["kind"] == "firewall" and r["spec"].get("allowed")
        if any("3333" in a.get("ports", []) for a in r["spec"]["allowed"])
        for source in r["spec"]["sourceRanges"]
    }
    s = with_clients(POOL) if replicas else Settings(project="acme-prod", zone="us-central1-a")
    script = deploy.startup_script(s)
    allowed = _unit_allows(script)
    assert allowed[0] == "localhost" and set(allowed[1:]) == to_port, (allowed, to_port)
    assert "IPAddressDeny=any\n" in script
    assert (POOL in to_port) is bool(replicas)


# --- drift against the Compute double -----------------------------------------------------------------


def _create(cloud: deploy.Cloud, s: Settings) -> planlib.Plan:
    clock = FakeClock()
    script = deploy.startup_script(s)
    return deploy.create(cloud, s, script=script, progress=lambda _m: None, sleep=clock.sleep, clock=clock)


def _template_script(engine: object) -> str:
    mig = engine.instance_group_managers["pypapo"]  # type: ignore[attr-defined]
    template = engine.instance_templates[mig.versions[0].instance_template.rsplit("/", 1)[-1]]  # type: ignore[attr-defined]
    return next(i.value for i in template.properties.metadata.items if i.key == "startup-script")


def test_clients_added_changed_and_removed() -> None:
    from provisioner.cloud import group_apply

    cloud, engine = group_cloud()
    # a first create with clients: the rule follows the address Google reserved, in the same run
    _create(cloud, with_clients(POOL))
    ip = engine.addresses["pypapo-ilb"].address
    rule = engine.firewalls["pypapo-allow-ilb"]
    assert list(rule.source_ranges) == [POOL] and list(rule.destination_ranges) == [f"{ip}/32"]
    assert [(a.I_p_protocol, list(a.ports)) for a in rule.allowed] == [("tcp", ["3333"])]
    assert rule.priority < engine.firewalls["pypapo-deny-port"].priority
    assert f"{POOL} 1;" in _template_script(engine)
    writes = engine.writes()
    assert writes.index("firewalls.insert", writes.index("addresses.insert")) > writes.index(
        "addresses.insert"
    )
    before = len(engine.writes())
    assert not _create(cloud, with_clients(POOL)).changed  # converged: nothing sent
    assert engine.writes()[before:] == []

    # another range: the rule is updated, and a new template rolls the source wall to the new ranges
    first_template = _template_script(engine)
    _create(cloud, with_clients(POOL, GKE))
    fresh = [
        w for w in engine.writes()[before:] if w.startswith(("firewalls.", "instance_templates.", "region_"))
    ]
    assert fresh == [
        "instance_templates.insert",
        "region_instance_group_managers.patch",  # surge first, none unavailable
        "firewalls.update",
    ]
    assert list(engine.firewalls["pypapo-allow-ilb"].source_ranges) == [POOL, GKE]
    script = _template_script(engine)
    assert script != first_template and f"{GKE} 1;" in script and f"{POOL} 1;" in script
    assert all(
        m.template
        == engine.instance_group_managers["pypapo"].versions[0].instance_template.rsplit("/", 1)[-1]
        for m in engine.group_instances()
    )

    # a command that forgot the flag changes nothing: it would cut Cloud Build and GKE off
    before = len(engine.writes())
    for forgot in (
        lambda: _create(cloud, S),
        lambda: group_apply.rollout(
            cloud, S, _new_image(engine), script=deploy.startup_script(S), sleep=lambda _s: None
        ),
    ):
        with pytest.raises(PypapoError) as refused:
            forgot()
        assert f"admits load-balancer clients {POOL}, {GKE}" in str(refused.value)
        assert f"--lb-client {POOL} --lb-client {GKE}" in str(refused.value)
        assert "gcloud compute firewall-rules delete pypapo-allow-ilb --project acme-prod" in str(
            refused.value
        )
    assert engine.writes()[before:] == []

    # none any more, deliberately (the rule deleted first, as the refusal says): the wall closes to them
    engine.firewalls.discard("pypapo-allow-ilb")
    before = len(engine.writes())
    _create(cloud, S)
    fresh = [
        w for w in engine.writes()[before:] if w.startswith(("firewalls.", "instance_templates.", "region_"))
    ]
    assert fresh == ["instance_templates.insert", "region_instance_group_managers.patch"]
    assert "pypapo-allow-ilb" not in engine.firewalls
    assert POOL not in _template_script(engine) and GKE not in _template_script(engine)


def test_status_and_destroy_know_the_rule() -> None:
    cloud, engine = group_cloud()
    s = with_clients(POOL)
    _create(cloud, s)
    from provisioner.cloud import group_apply

    state = group_apply.status(cloud, s)
    assert "pypapo-allow-ilb" in state["firewalls"] and state["in_sync"]
    deploy.destroy(cloud, s, delete_bucket=False)
    assert not len(engine.firewalls)


# --- NGINX's source wall with the clients: Debian's nginx in a network namespace of its own ------------

# Runs inside `unshare --net`: a fresh loopback holds the instance's address and one address per client
# network, so a connection really comes from 10.77.0.5 (a listed range) or 10.78.0.5 (another VM of the
# VPC) as it would through a passthrough balancer, which keeps the client's source address.
_WALL_PROBE = r"""
import json, socket, subprocess, sys, time
nginx, conf, runtime, port = sys.argv[1:5]
port = int(port)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for address in sys.argv[5:]:
    subprocess.run(["ip", "addr", "add", address, "dev", "lo"], check=True)
proc = subprocess.Popen([nginx, "-p", runtime, "-e", "stderr", "-c", conf, "-g", "daemon off;"])
try:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("10.0.9.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
    out = {}
    for source in ("10.77.0.5", "10.78.0.5", "35.191.3.4"):
        chunks = []
        with socket.create_connection(("10.0.9.1", port), timeout=5, source_address=(source, 0)) as sock:
            sock.sendall(b"GET /simple/ HTTP/1.0\r\nHost: index\r\n\r\n")
            try:
                while data := sock.recv(65536):
                    chunks.append(data)
            except ConnectionResetError:
                pass
        out[source] = b"".join(chunks).split(b"\r\n", 1)[0].decode()
    print(json.dumps(out))
finally:
    proc.terminate()
    proc.wait(timeout=10)
"""


def test_the_source_wall_admits_a_listed_client_range_and_still_closes_on_another(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    from provisioner.appliance.render import ApplianceConfig
    from tests.appliance.test_source_wall import wall_conf
    from tests.fixtures.tools import need

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a network namespace with the clients' addresses)")
    nginx = need("nginx")
    s = with_clients("10.77.0.0/24")
    cfg = ApplianceConfig(bucket=s.bucket, port=s.port, allowed_sources=deploy.allowed_sources(s))
    conf, runtime = wall_conf(cfg, tmp_path, f"10.0.9.1:{s.port}")
    addresses = ["10.0.9.1/32", "10.77.0.5/32", "10.78.0.5/32", "35.191.3.4/32"]
    probe = [sys.executable, "-c", _WALL_PROBE, nginx, str(conf), str(runtime), str(s.port), *addresses]
    done = subprocess.run(["unshare", "--net", *probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["10.77.0.5"] == "HTTP/1.1 200 OK"  # a listed client range, through the balancer
    assert answers["35.191.3.4"] == "HTTP/1.1 200 OK"  # Google's health checkers, as before
    assert answers["10.78.0.5"] == ""  # any other VPC source: closed with no answer (444)
    log = (runtime / "access.log").read_text()
    assert "10.77.0.5" in log and " 444 " in log.split("10.78.0.5", 1)[1].splitlines()[0]
