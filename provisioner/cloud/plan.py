"""Pure: the desired Google Cloud state of one pypapo deployment and the diff against what exists.

Every resource is a real client-library object (`compute_v1.Instance`, `compute_v1.Firewall`,
`compute_v1.Set...Request`, `iam_admin_v1.CreateServiceAccountRequest`, a `storage.Bucket` built without
a client). A `Step` pairs one of them with the thin-layer method that sends it; `provision create` runs
the steps in order, `provision plan` prints them. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from google.cloud import compute_v1, iam_admin_v1, storage

from provisioner.appliance import guest
from provisioner.cloud import names
from provisioner.cloud.names import CLOUD_PLATFORM_SCOPE, IAP_TCP_RANGE
from provisioner.cloud.settings import Settings
from provisioner.repo.location import gs_url

SCHEMA_VERSION = 1
SOFT_DELETE_SECONDS = 7 * 24 * 3600  # the GCS default; keeps deleted packages recoverable a week
NONCURRENT_DAYS = 30  # older versions of index pages are kept a month, then deleted
DISK_TYPE = "pd-balanced"

# Roles. The VM only reads; a publisher reads and rewrites pages (generation preconditions on
# overwrite need storage.objects.delete, which objectCreator lacks); a reader opens the tunnel.
VM_BUCKET_ROLE = "roles/storage.objectViewer"
PUBLISHER_ROLE = "roles/storage.objectUser"
TUNNEL_ROLE = "roles/iap.tunnelResourceAccessor"
INSTANCE_VIEWER_ROLE = "roles/compute.viewer"  # gcloud start-iap-tunnel reads the instance first

HARDENING_METADATA = {
    "enable-oslogin": "TRUE",
    "block-project-ssh-keys": "TRUE",
    "serial-port-enable": "FALSE",
    "enable-guest-attributes": "TRUE",  # the appliance reports readiness as a guest attribute
}


# --- names ---------------------------------------------------------------------------------------------


def bucket_url(s: Settings) -> str:
    return gs_url(s.bucket, s.prefix)


def service_account_member(s: Settings) -> str:
    return f"serviceAccount:{s.service_account_email}"


# --- desired state -------------------------------------------------------------------------------------


def desired_bucket(s: Settings) -> storage.Bucket:
    """The bucket's properties, as a storage.Bucket built without a client (nothing is sent)."""
    bucket = storage.Bucket(client=None, name=s.bucket)
    # Location is an insert-time property; the setter warns, the property patch does not.
    bucket._patch_property("location", s.region.upper())
    bucket.storage_class = "STANDARD"
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    bucket.iam_configuration.public_access_prevention = "enforced"
    bucket.versioning_enabled = True
    bucket.soft_delete_policy.retention_duration_seconds = SOFT_DELETE_SECONDS
    bucket.labels = dict(s.labels)
    bucket.lifecycle_rules = [
        {"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": NONCURRENT_DAYS}}
    ]
    return bucket


def bucket_properties(bucket: storage.Bucket) -> dict[str, Any]:
    """The JSON resource the bucket carries (what the Storage API receives and returns)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(json.loads(json.dumps(bucket._properties, sort_keys=True, default=str)))


# The properties `create` owns; anything else on an existing bucket is left alone.
def _bucket_owned(props: Mapping[str, Any]) -> dict[str, Any]:
    iam = props.get("iamConfiguration") or {}
    return {
        "iamConfiguration.uniformBucketLevelAccess.enabled": bool(
            (iam.get("uniformBucketLevelAccess") or {}).get("enabled", False)
        ),
        "iamConfiguration.publicAccessPrevention": iam.get("publicAccessPrevention", "inherited"),
        "versioning.enabled": bool((props.get("versioning") or {}).get("enabled", False)),
        "softDeletePolicy.retentionDurationSeconds": int(
            (props.get("softDeletePolicy") or {}).get("retentionDurationSeconds", 0) or 0
        ),
        "labels": {k: v for k, v in (props.get("labels") or {}).items() if k in ("app", "pypapo-instance")},
        "lifecycle.rule": (props.get("lifecycle") or {}).get("rule", []),
    }


def service_account_request(s: Settings) -> iam_admin_v1.CreateServiceAccountRequest:
    return iam_admin_v1.CreateServiceAccountRequest(
        name=f"projects/{s.project}",
        account_id=s.service_account,
        service_account=iam_admin_v1.ServiceAccount(
            display_name="pypapo appliance",
            description=f"Runs VM {s.instance}: reads gs://{s.bucket} only. No keys. Managed by pypapo.",
        ),
    )


# Firewall priorities: the smaller number wins; at equal priority a deny wins over an allow. pypapo's
# allows rank just above its deny, and both above the default 1000 of rules made without a priority and
# far above `default-allow-internal` (65534), so no broad allow of the network opens the serving port.
ALLOW_PRIORITY = 900
DENY_PRIORITY = 910
ANYWHERE = "0.0.0.0/0"


def desired_firewall(s: Settings) -> compute_v1.Firewall:
    """IAP's TCP forwarding range to SSH and the serving port, for the appliance's account only."""
    return compute_v1.Firewall(
        name=s.firewall_name,
        description=f"pypapo: IAP TCP forwarding to {s.instance} (SSH and the index port) only",
        network=names.network_url(s.project, s.network),
        direction="INGRESS",
        priority=ALLOW_PRIORITY,
        disabled=False,
        source_ranges=[IAP_TCP_RANGE],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22", str(s.port)])],
        target_service_accounts=[s.service_account_email],
    )


def desired_deny_firewall(s: Settings) -> compute_v1.Firewall:
    """Everyone else: the serving port is closed to the VPC, `default-allow-internal` included."""
    return compute_v1.Firewall(
        name=s.deny_firewall_name,
        description="pypapo: the index port is denied from anywhere else (IAM through IAP is the only gate)",
        network=names.network_url(s.project, s.network),
        direction="INGRESS",
        priority=DENY_PRIORITY,
        disabled=False,
        source_ranges=[ANYWHERE],
        denied=[compute_v1.Denied(I_p_protocol="tcp", ports=[str(s.port)])],
        target_service_accounts=[s.service_account_email],
    )


def private_google_access_request(s: Settings) -> compute_v1.SetPrivateIpGoogleAccessSubnetworkRequest:
    return compute_v1.SetPrivateIpGoogleAccessSubnetworkRequest(
        project=s.project,
        region=s.region,
        subnetwork=s.subnet,
        subnetworks_set_private_ip_google_access_request_resource=(
            compute_v1.SubnetworksSetPrivateIpGoogleAccessRequest(private_ip_google_access=True)
        ),
    )


def desired_metadata(startup_script: str) -> dict[str, str]:
    return {**HARDENING_METADATA, "startup-script": startup_script}


def metadata_items(values: Mapping[str, str]) -> list[compute_v1.Items]:
    return [compute_v1.Items(key=k, value=values[k]) for k in sorted(values)]


def desired_shielded() -> compute_v1.ShieldedInstanceConfig:
    return compute_v1.ShieldedInstanceConfig(
        enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
    )


def desired_instance(s: Settings, *, image: str, startup_script: str) -> compute_v1.Instance:
    """The hardened VM. No access_configs: no external IP, reachable only through IAP."""
    return compute_v1.Instance(
        name=s.instance,
        description="pypapo: private Python package index (managed by provision create)",
        machine_type=f"zones/{s.zone}/machineTypes/{s.machine_type}",
        labels=dict(s.labels),
        can_ip_forward=False,
        deletion_protection=True,
        shielded_instance_config=desired_shielded(),
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                type_="PERSISTENT",
                mode="READ_WRITE",
                device_name=s.instance,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=image,
                    disk_size_gb=s.disk_size_gb,
                    disk_type=f"zones/{s.zone}/diskTypes/{DISK_TYPE}",
                    labels=dict(s.labels),
                ),
            )
        ],
        network_interfaces=[
            compute_v1.NetworkInterface(
                network=names.network_url(s.project, s.network),
                subnetwork=names.subnet_url(s.project, s.region, s.subnet),
                stack_type="IPV4_ONLY",
            )
        ],
        metadata=compute_v1.Metadata(items=metadata_items(desired_metadata(startup_script))),
        service_accounts=[
            # cloud-platform scope: the service account's IAM bindings (bucket read only) do the limiting.
            compute_v1.ServiceAccount(email=s.service_account_email, scopes=[CLOUD_PLATFORM_SCOPE])
        ],
        scheduling=compute_v1.Scheduling(
            automatic_restart=True,
            on_host_maintenance="MIGRATE",
            preemptible=False,
            provisioning_model="STANDARD",
        ),
    )


def insert_instance_request(s: Settings, instance: compute_v1.Instance) -> compute_v1.InsertInstanceRequest:
    return compute_v1.InsertInstanceRequest(project=s.project, zone=s.zone, instance_resource=instance)


def guest_attributes_request(s: Settings) -> compute_v1.GetGuestAttributesInstanceRequest:
    return compute_v1.GetGuestAttributesInstanceRequest(
        project=s.project, zone=s.zone, instance=s.instance, query_path=guest.QUERY_PATH
    )


def guest_values(
    attrs: compute_v1.GuestAttributes | None, namespace: str = guest.NAMESPACE
) -> dict[str, str]:
    """`{key: value}` of one namespace (pypapo/: what `guest.serving` judges); {} before any write."""
    if attrs is None:
        return {}
    return {e.key: e.value for e in attrs.query_value.items if e.namespace == namespace}


# --- IAM policies (pure edits of the real policy objects) ---------------------------------------------


def normalize_member(member: str) -> str:
    """user:/group:/serviceAccount:/domain:/principal...; a bare email gets user: or serviceAccount:."""
    from provisioner.errors import PypapoError

    member = member.strip()
    kinds = ("user:", "group:", "serviceAccount:", "domain:", "principal://", "principalSet://")
    if member.startswith(kinds):
        return member
    if "@" in member and ":" not in member:
        return ("serviceAccount:" if member.endswith(".gserviceaccount.com") else "user:") + member
    raise PypapoError(
        f"member {member!r} is not an IAM principal; use user:EMAIL, group:EMAIL, serviceAccount:EMAIL"
        " or domain:DOMAIN"
    )


# --- the plan -----------------------------------------------------------------------------------------


class Kind(StrEnum):
    BUCKET = "bucket"
    BUCKET_IAM_BINDING = "bucket_iam_binding"
    SERVICE_ACCOUNT = "service_account"
    SERVICE_ACCOUNT_KEY = "service_account_key"
    SUBNETWORK = "subnetwork"
    FIREWALL = "firewall"
    IMAGE = "image"  # the golden image `create` bakes first while the family is empty
    INSTANCE = "instance"
    # the group mode (`--replicas N`, `cloud/group_plan.py`)
    INSTANCE_TEMPLATE = "instance_template"
    HEALTH_CHECK = "health_check"
    INSTANCE_GROUP = "instance_group"
    BACKEND_SERVICE = "backend_service"
    ADDRESS = "address"
    FORWARDING_RULE = "forwarding_rule"


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NONE = "none"  # exists as wanted
    KEEP = "keep"  # destroy leaves it (the bucket, the subnet)


UNCHANGED = (Action.NONE, Action.KEEP)


class Method(StrEnum):
    """The thin-layer calls a plan step can ask for ("layer.method"); `apply.Cloud` maps each to the
    bound method that sends it. The value is what plan JSON shows."""

    CREATE_BUCKET = "storage.create_bucket"
    PATCH_BUCKET = "storage.patch_bucket"
    DELETE_BUCKET = "storage.delete_bucket"
    ADD_MEMBER = "iam.add_member"
    REMOVE_MEMBER = "iam.remove_member"
    CREATE_SERVICE_ACCOUNT = "iam.create_service_account"
    DELETE_SERVICE_ACCOUNT = "iam.delete_service_account"
    DELETE_SERVICE_ACCOUNT_KEY = "iam.delete_service_account_key"
    SET_PRIVATE_GOOGLE_ACCESS = "compute.set_private_google_access"
    INSERT_FIREWALL = "compute.insert_firewall"
    UPDATE_FIREWALL = "compute.update_firewall"
    DELETE_FIREWALL = "compute.delete_firewall"
    INSERT_INSTANCE = "compute.insert_instance"
    DELETE_INSTANCE = "compute.delete_instance"
    SET_METADATA = "compute.set_metadata"
    SET_LABELS = "compute.set_labels"
    SET_DELETION_PROTECTION = "compute.set_deletion_protection"
    DELETE_ACCESS_CONFIG = "compute.delete_access_config"
    UPDATE_SHIELDED_INSTANCE_CONFIG = "compute.update_shielded_instance_config"
    SET_SERVICE_ACCOUNT = "compute.set_service_account"
    SET_MACHINE_TYPE = "compute.set_machine_type"
    STOP_INSTANCE = "compute.stop_instance"
    START_INSTANCE = "compute.start_instance"
    # the group mode (`cloud/group_apply.senders`)
    INSERT_INSTANCE_TEMPLATE = "compute.insert_instance_template"
    DELETE_INSTANCE_TEMPLATE = "compute.delete_instance_template"
    INSERT_HEALTH_CHECK = "compute.insert_health_check"
    UPDATE_HEALTH_CHECK = "compute.update_health_check"
    DELETE_HEALTH_CHECK = "compute.delete_health_check"
    INSERT_INSTANCE_GROUP = "compute.insert_region_instance_group_manager"
    PATCH_INSTANCE_GROUP = "compute.patch_region_instance_group_manager"
    RESIZE_INSTANCE_GROUP = "compute.resize_region_instance_group_manager"
    DELETE_INSTANCE_GROUP = "compute.delete_region_instance_group_manager"
    INSERT_BACKEND_SERVICE = "compute.insert_region_backend_service"
    DELETE_BACKEND_SERVICE = "compute.delete_region_backend_service"
    INSERT_ADDRESS = "compute.insert_address"
    DELETE_ADDRESS = "compute.delete_address"
    INSERT_FORWARDING_RULE = "compute.insert_forwarding_rule"
    DELETE_FORWARDING_RULE = "compute.delete_forwarding_rule"


class IamResource(StrEnum):
    BUCKET = "bucket"
    IAP_TUNNEL_INSTANCE = "iap_tunnel_instance"
    INSTANCE = "instance"  # resource "ZONE/NAME"
    IAP_TUNNEL = "iap_tunnel"  # the project's tunnel resource, projects/P/iap_tunnel (conditional)
    PROJECT = "project"  # projects/P (conditional)
    SERVICE_ACCOUNT = "service_account"  # resource: the account's email


@dataclass(frozen=True)
class Condition:
    """An IAM condition (a CEL `google.type.Expr`); two bindings of a role are one only if all three agree."""

    title: str
    description: str
    expression: str

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "description": self.description, "expression": self.expression}


@dataclass(frozen=True)
class IamChange:
    """A binding to add or remove on one resource, under `condition` (None: the unconditional binding).
    The thin layer reads the policy (version 3), edits that one binding, writes with the etag."""

    resource_type: IamResource
    resource: str
    role: str
    member: str
    condition: Condition | None = None


@dataclass(frozen=True)
class Step:
    """One API call of a plan or a pipeline: `method` on `request` (a real client-library object).

    For `create`/`destroy` the method is a `Method` that `apply` sends; for the image pipelines it is
    the API method a reviewer looks up ("compute.instances.insert"), and the pipeline sends it itself.
    `why` says what it does for people; `note` is a remark for the reviewer.
    """

    method: Method | str
    request: Any = None
    why: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The image pipelines' dry-run form."""
        out: dict[str, Any] = {"step": self.why, "call": str(self.method)}
        if self.request is not None:
            out["request"] = request_dict(self.request)
        if self.note:
            out["note"] = self.note
        return out


def request_dict(msg: Any) -> Any:
    """The request as the API sees it: proto-plus messages through their own JSON encoder, only what
    is set (proto3 defaults, empty lists and zero enums, are noise to a reviewer and to the API)."""
    if isinstance(msg, dict | list | str | int | float | bool):
        return msg
    return json.loads(request_json(msg))


def request_json(msg: Any) -> str:
    return type(msg).to_json(
        msg, use_integers_for_enums=False, indent=0, always_print_fields_with_no_presence=False
    )


@dataclass
class ResourcePlan:
    kind: Kind
    name: str
    action: Action
    spec: Any = None  # the desired (or, for delete, current) object
    changes: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    settings: Settings
    mode: str  # offline | live
    operation: str  # create | destroy
    resources: list[ResourcePlan]

    @property
    def steps(self) -> list[Step]:
        return [step for r in self.resources for step in r.steps]

    @property
    def changed(self) -> bool:
        return any(r.action not in UNCHANGED for r in self.resources)

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.resources:
            out[str(r.action)] = out.get(str(r.action), 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "pypapo-plan",
            "operation": self.operation,
            "mode": self.mode,
            "settings": self.settings.to_dict(),
            "changed": self.changed,
            "summary": self.summary(),
            "resources": [
                {
                    "kind": r.kind,
                    "name": r.name,
                    "action": r.action,
                    "spec": to_jsonable(r.spec),
                    "changes": r.changes,
                    "steps": [
                        {"method": st.method, "why": st.why, "request": to_jsonable(st.request)}
                        for st in r.steps
                    ],
                    "notes": r.notes,
                }
                for r in self.resources
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_text(self) -> str:
        lines = [f"pypapo {self.operation} plan ({self.mode}) for project {self.settings.project}:"]
        marks = {"create": "+", "update": "~", "delete": "-", "none": "=", "keep": "="}
        for r in self.resources:
            lines.append(f"  {marks.get(r.action, '?')} {r.kind} {r.name}: {r.action}")
            for c in r.changes:
                lines.append(f"      {c['field']}: {json.dumps(c['current'])} -> {json.dumps(c['desired'])}")
            for n in r.notes:
                lines.append(f"      note: {n}")
            if r.action is Action.CREATE and r.spec is not None:
                spec = json.dumps(_abbreviate(to_jsonable(r.spec)), indent=2, sort_keys=True)
                lines.extend("      " + line for line in spec.splitlines())
        counts = ", ".join(f"{n} {a}" for a, n in self.summary().items())
        lines.append(f"  ({counts})" if self.changed else f"  nothing to change ({counts})")
        return "\n".join(lines) + "\n"


def _abbreviate(spec: Any) -> Any:
    """The text plan shows the startup script by size and digest; the JSON plan carries it whole."""
    import hashlib

    if isinstance(spec, dict):
        if spec.get("key") == "startup-script" and isinstance(spec.get("value"), str):
            digest = hashlib.sha256(spec["value"].encode()).hexdigest()[:16]
            return {
                **spec,
                "value": f"<{len(spec['value'])} bytes, sha256 {digest}...; --output json shows it>",
            }
        return {k: _abbreviate(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_abbreviate(v) for v in spec]
    return spec


def to_jsonable(obj: Any) -> Any:
    """Real request objects as the JSON their API would carry (enum names, snake_case fields)."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, storage.Bucket):
        return {"name": obj.name, **bucket_properties(obj)}
    if isinstance(obj, IamChange):
        return {
            "resource_type": obj.resource_type,
            "resource": obj.resource,
            "role": obj.role,
            "member": obj.member,
        }
    to_dict = getattr(type(obj), "to_dict", None)
    if to_dict is not None and hasattr(type(obj), "meta"):  # proto-plus message
        return to_dict(
            obj,
            use_integers_for_enums=False,
            preserving_proto_field_name=False,  # the REST JSON names: IPProtocol, sourceRanges, ...
            always_print_fields_with_no_presence=False,
        )
    if hasattr(obj, "DESCRIPTOR"):  # raw protobuf (google.iam.v1)
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(obj)
    return str(obj)


# --- what exists --------------------------------------------------------------------------------------


@dataclass
class Actual:
    """What exists now, as the APIs returned it (None: does not exist)."""

    bucket: storage.Bucket | None = None
    bucket_members: dict[str, set[str]] = field(default_factory=dict)
    service_account: iam_admin_v1.ServiceAccount | None = None
    service_account_keys: list[iam_admin_v1.ServiceAccountKey] = field(default_factory=list)
    subnetwork: compute_v1.Subnetwork | None = None
    firewall: compute_v1.Firewall | None = None
    deny_firewall: compute_v1.Firewall | None = None
    instance: compute_v1.Instance | None = None
    image_family_exists: bool = False
    group: Any = None  # `group_plan.GroupActual` in the group mode (`--replicas N`), else None


def _change(fieldname: str, current: Any, desired: Any) -> dict[str, Any]:
    return {"field": fieldname, "current": to_jsonable(current), "desired": to_jsonable(desired)}


def choose_image(s: Settings, actual: Actual | None) -> tuple[str, list[str]]:
    """The appliance always boots its own family: an empty family is baked first (`_image_plan`), since
    an appliance has no egress and a plain Debian image could not install its packages."""
    own = names.family_image(s.image_project, s.image_family)
    if actual is not None and not actual.image_family_exists and actual.instance is None:
        return own, [f"boots the image baked just before it into {own}"]
    return own, []


def _image_plan(s: Settings, actual: Actual | None) -> ResourcePlan | None:
    """`create` bakes the family's first image (the very `provision image build`) when it would create
    the appliance while the family is empty. Offline plans assume nothing exists, so they bake too."""
    if actual is not None and (actual.image_family_exists or actual.instance is not None):
        return None
    family = names.family_image(s.image_project, s.image_family)
    spec = {
        "family": family,
        "pipeline": "provision image build",
        "builder": f"a temporary VM from {names.fallback_image()} with an ephemeral external IP, no service"
        " account; deleted after the bake",
    }
    notes = [
        "the builder alone has egress (apt, gcsfuse's repository), for the minutes of the bake;"
        " the appliance never does",
        "see every request with `provision image build --dry-run`",
    ]
    if actual is None:
        notes.append("skipped when the family already has an image")
    return ResourcePlan(Kind.IMAGE, family, Action.CREATE, spec, notes=notes)


def _bucket_plan(s: Settings, actual: Actual | None) -> ResourcePlan:
    desired = desired_bucket(s)
    name = f"gs://{s.bucket}"
    current = actual.bucket if actual else None
    if current is None:
        return ResourcePlan(
            Kind.BUCKET, name, Action.CREATE, desired, steps=[Step(Method.CREATE_BUCKET, desired)]
        )
    want = _bucket_owned(bucket_properties(desired))
    have = _bucket_owned(bucket_properties(current))
    changes = [_change(k, have[k], want[k]) for k in sorted(want) if have[k] != want[k]]
    notes = []
    if (current.location or "").upper() != desired.location:
        notes.append(f"bucket is in {current.location}, not {desired.location}; location cannot change")
    if not changes:
        return ResourcePlan(Kind.BUCKET, name, Action.NONE, desired, notes=notes)
    return ResourcePlan(
        Kind.BUCKET, name, Action.UPDATE, desired, changes, [Step(Method.PATCH_BUCKET, desired)], notes
    )


def _service_account_plans(s: Settings, actual: Actual | None) -> list[ResourcePlan]:
    req = service_account_request(s)
    email = s.service_account_email
    plans = []
    if actual is None or actual.service_account is None:
        plans.append(
            ResourcePlan(
                Kind.SERVICE_ACCOUNT,
                email,
                Action.CREATE,
                req,
                steps=[Step(Method.CREATE_SERVICE_ACCOUNT, req)],
            )
        )
    else:
        plans.append(ResourcePlan(Kind.SERVICE_ACCOUNT, email, Action.NONE, req))
        if actual.service_account.disabled:
            plans[-1].notes.append("the service account is disabled; the VM cannot read the bucket")
        for key in actual.service_account_keys:
            # Keys would let the account be used off the VM; this account must never have one.
            plans.append(
                ResourcePlan(
                    Kind.SERVICE_ACCOUNT_KEY,
                    key.name,
                    Action.DELETE,
                    key,
                    steps=[
                        Step(
                            Method.DELETE_SERVICE_ACCOUNT_KEY,
                            iam_admin_v1.DeleteServiceAccountKeyRequest(name=key.name),
                        )
                    ],
                    notes=["user-managed key on the appliance's account (policy: no keys)"],
                )
            )
    change = IamChange(IamResource.BUCKET, s.bucket, VM_BUCKET_ROLE, service_account_member(s))
    has = actual is not None and change.member in actual.bucket_members.get(change.role, set())
    plans.append(
        ResourcePlan(
            Kind.BUCKET_IAM_BINDING,
            f"gs://{s.bucket} {VM_BUCKET_ROLE} {change.member}",
            Action.NONE if has else Action.CREATE,
            change,
            steps=[] if has else [Step(Method.ADD_MEMBER, change)],
        )
    )
    return plans


def _subnet_plan(s: Settings, actual: Actual | None) -> ResourcePlan:
    req = private_google_access_request(s)
    name = names.subnet_url(s.project, s.region, s.subnet)
    spec = {"private_ip_google_access": True}
    if actual is None:
        return ResourcePlan(
            Kind.SUBNETWORK,
            name,
            Action.UPDATE,
            spec,
            steps=[Step(Method.SET_PRIVATE_GOOGLE_ACCESS, req)],
            notes=["Private Google Access lets the VM, which has no external IP, reach Cloud Storage"],
        )
    sub = actual.subnetwork
    if sub is None:
        from provisioner.errors import PypapoError

        raise PypapoError(
            f"subnetwork {s.subnet} does not exist in {s.region} of network {s.network}; pass --subnet"
            f" (`gcloud compute networks subnets list --network {s.network} --project {s.project}`)"
        )
    if sub.private_ip_google_access:
        return ResourcePlan(Kind.SUBNETWORK, name, Action.NONE, spec)
    return ResourcePlan(
        Kind.SUBNETWORK,
        name,
        Action.UPDATE,
        spec,
        [_change("private_ip_google_access", False, True)],
        [Step(Method.SET_PRIVATE_GOOGLE_ACCESS, req)],
    )


def _firewall_fields(fw: compute_v1.Firewall) -> dict[str, Any]:
    return {
        "network": fw.network.split("/compute/v1/")[-1],
        "direction": fw.direction,
        "disabled": bool(fw.disabled),
        "source_ranges": sorted(fw.source_ranges),
        "allowed": sorted((a.I_p_protocol, tuple(sorted(a.ports))) for a in fw.allowed),
        "denied": sorted((a.I_p_protocol, tuple(sorted(a.ports))) for a in fw.denied),
        "priority": fw.priority,
        "destination_ranges": sorted(fw.destination_ranges),
        "target_service_accounts": sorted(fw.target_service_accounts),
        "target_tags": sorted(fw.target_tags),
        "source_tags": sorted(fw.source_tags),
        "source_service_accounts": sorted(fw.source_service_accounts),
    }


def _firewall_plan(
    s: Settings, desired: compute_v1.Firewall, current: compute_v1.Firewall | None
) -> ResourcePlan:
    name = desired.name
    if current is None:
        req = compute_v1.InsertFirewallRequest(project=s.project, firewall_resource=desired)
        return ResourcePlan(
            Kind.FIREWALL, name, Action.CREATE, desired, steps=[Step(Method.INSERT_FIREWALL, req)]
        )
    want, have = _firewall_fields(desired), _firewall_fields(current)
    changes = [_change(k, have[k], want[k]) for k in sorted(want) if have[k] != want[k]]
    if not changes:
        return ResourcePlan(Kind.FIREWALL, name, Action.NONE, desired)
    req = compute_v1.UpdateFirewallRequest(project=s.project, firewall=name, firewall_resource=desired)
    return ResourcePlan(
        Kind.FIREWALL, name, Action.UPDATE, desired, changes, [Step(Method.UPDATE_FIREWALL, req)]
    )


def _firewall_plans(s: Settings, actual: Actual | None) -> list[ResourcePlan]:
    """The IAP allow and the deny for everyone else on the serving port (issue: IAM is the only gate)."""
    return [
        _firewall_plan(s, desired_firewall(s), actual.firewall if actual else None),
        _firewall_plan(s, desired_deny_firewall(s), actual.deny_firewall if actual else None),
    ]


def _metadata_dict(instance: compute_v1.Instance) -> dict[str, str]:
    return {i.key: i.value for i in instance.metadata.items}


def _shown(key: str, value: str | None) -> str | None:
    # The startup script is long: the diff says that it changed, the spec shows it in full.
    return f"<{len(value)} bytes>" if key == "startup-script" and value is not None else value


def _last(url: str) -> str:
    return url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class InstanceDrift:
    """The live instance beside the one `create` wants, as every drift check sees it."""

    s: Settings
    current: compute_v1.Instance
    desired: compute_v1.Instance
    startup_script: str

    @property
    def base(self) -> dict[str, str]:
        return {"project": self.s.project, "zone": self.s.zone, "instance": self.s.instance}


@dataclass
class Fix:
    """What one check found: the plan's changes, the steps that fix them in place, the steps Compute
    Engine only accepts on a stopped VM (`restart`), and notes for what no step can fix."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    restart: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _metadata_fix(d: InstanceDrift) -> Fix | None:
    want, have = desired_metadata(d.startup_script), _metadata_dict(d.current)
    if have == want:
        return None
    changes = [
        _change(f"metadata.{key}", _shown(key, have.get(key)), _shown(key, want.get(key)))
        for key in sorted(set(want) | set(have))
        if have.get(key) != want.get(key)
    ]
    metadata = compute_v1.Metadata(fingerprint=d.current.metadata.fingerprint, items=metadata_items(want))
    step = Step(
        Method.SET_METADATA,
        compute_v1.SetMetadataInstanceRequest(**d.base, metadata_resource=metadata),
        "hardening metadata and startup script (only these keys: others such as ssh-keys go)",
    )
    return Fix(changes, [step])


def _labels_fix(d: InstanceDrift) -> Fix | None:
    have = dict(d.current.labels)
    if all(have.get(k) == v for k, v in d.s.labels.items()):
        return None
    labels = {**have, **d.s.labels}  # other labels are kept
    body = compute_v1.InstancesSetLabelsRequest(label_fingerprint=d.current.label_fingerprint, labels=labels)
    step = Step(
        Method.SET_LABELS,
        compute_v1.SetLabelsInstanceRequest(**d.base, instances_set_labels_request_resource=body),
    )
    return Fix([_change("labels", have, labels)], [step])


def _deletion_protection_fix(d: InstanceDrift) -> Fix | None:
    if d.current.deletion_protection:
        return None
    request = compute_v1.SetDeletionProtectionInstanceRequest(
        project=d.s.project, zone=d.s.zone, resource=d.s.instance, deletion_protection=True
    )
    return Fix([_change("deletion_protection", False, True)], [Step(Method.SET_DELETION_PROTECTION, request)])


def _external_ip_fix(d: InstanceDrift) -> Fix | None:
    fix = Fix()
    for nic in d.current.network_interfaces:
        for ac in nic.access_configs:
            fix.changes.append(_change(f"network_interfaces.{nic.name}.access_configs", ac.name, None))
            request = compute_v1.DeleteAccessConfigInstanceRequest(
                **d.base, access_config=ac.name, network_interface=nic.name
            )
            fix.steps.append(
                Step(
                    Method.DELETE_ACCESS_CONFIG, request, "no external IP: the VM is reached only through IAP"
                )
            )
    return fix if fix.changes else None


def _shielded_fix(d: InstanceDrift) -> Fix | None:
    sic = d.current.shielded_instance_config
    if (sic.enable_secure_boot, sic.enable_vtpm, sic.enable_integrity_monitoring) == (True, True, True):
        return None
    want = desired_shielded()
    request = compute_v1.UpdateShieldedInstanceConfigInstanceRequest(
        **d.base, shielded_instance_config_resource=want
    )
    return Fix(
        [_change("shielded_instance_config", sic, want)],
        restart=[Step(Method.UPDATE_SHIELDED_INSTANCE_CONFIG, request)],
    )


def _service_account_fix(d: InstanceDrift) -> Fix | None:
    have = [(a.email, sorted(a.scopes)) for a in d.current.service_accounts]
    if have == [(d.s.service_account_email, [CLOUD_PLATFORM_SCOPE])]:
        return None
    body = compute_v1.InstancesSetServiceAccountRequest(
        email=d.s.service_account_email, scopes=[CLOUD_PLATFORM_SCOPE]
    )
    request = compute_v1.SetServiceAccountInstanceRequest(
        **d.base, instances_set_service_account_request_resource=body
    )
    return Fix(
        [_change("service_accounts", d.current.service_accounts, d.desired.service_accounts)],
        restart=[Step(Method.SET_SERVICE_ACCOUNT, request)],
    )


def _machine_type_fix(d: InstanceDrift) -> Fix | None:
    have = _last(d.current.machine_type)
    if have == d.s.machine_type:
        return None
    body = compute_v1.InstancesSetMachineTypeRequest(machine_type=d.desired.machine_type)
    request = compute_v1.SetMachineTypeInstanceRequest(
        **d.base, instances_set_machine_type_request_resource=body
    )
    return Fix(
        [_change("machine_type", have, d.s.machine_type)], restart=[Step(Method.SET_MACHINE_TYPE, request)]
    )


def _ip_forwarding_note(d: InstanceDrift) -> Fix | None:
    if not d.current.can_ip_forward:
        return None
    return Fix(
        notes=[
            "can_ip_forward is on and cannot be changed in place: `provision destroy` then `provision create`"
        ]
    )


# Run in this order; the plan's changes and steps follow it. A check returns None when in sync.
INSTANCE_CHECKS = (
    _metadata_fix,
    _labels_fix,
    _deletion_protection_fix,
    _external_ip_fix,
    _shielded_fix,
    _service_account_fix,
    _machine_type_fix,
    _ip_forwarding_note,
)


def _power_fix(d: InstanceDrift, restart: list[Step]) -> Fix:
    """Stop around the stopped-only changes, and start a VM that is not running (with them or alone)."""
    stopped = d.current.status in ("TERMINATED", "STOPPED", "SUSPENDED")
    fix = Fix()
    if restart:
        fix.notes.append("these changes need a stopped VM: it is stopped, changed and started again")
        if not stopped:
            fix.steps.append(Step(Method.STOP_INSTANCE, compute_v1.StopInstanceRequest(**d.base)))
        fix.steps.extend(restart)
    if stopped:
        fix.changes.append(_change("status", d.current.status, "RUNNING"))
    if restart or stopped:
        fix.steps.append(Step(Method.START_INSTANCE, compute_v1.StartInstanceRequest(**d.base)))
    return fix


def _instance_plan(s: Settings, actual: Actual | None, startup_script: str) -> ResourcePlan:
    image, notes = choose_image(s, actual)
    desired = desired_instance(s, image=image, startup_script=startup_script)
    name = f"{s.zone}/{s.instance}"
    current = actual.instance if actual else None
    if current is None:
        step = Step(Method.INSERT_INSTANCE, insert_instance_request(s, desired))
        return ResourcePlan(Kind.INSTANCE, name, Action.CREATE, desired, steps=[step], notes=notes)
    drift = InstanceDrift(s, current, desired, startup_script)
    fixes = [fix for check in INSTANCE_CHECKS if (fix := check(drift)) is not None]
    fixes.append(_power_fix(drift, [step for fix in fixes for step in fix.restart]))
    changes = [c for fix in fixes for c in fix.changes]
    steps = [step for fix in fixes for step in fix.steps]
    notes = [n for fix in fixes for n in fix.notes]
    if not changes:
        return ResourcePlan(Kind.INSTANCE, name, Action.NONE, desired, notes=notes)
    return ResourcePlan(Kind.INSTANCE, name, Action.UPDATE, desired, changes, steps, notes)


def shared_plans(s: Settings, actual: Actual | None) -> list[ResourcePlan]:
    """What both modes make: bucket, service account and its bucket binding, subnet, IAP allow and deny."""
    resources = [_bucket_plan(s, actual)]
    resources += _service_account_plans(s, actual)
    resources += [_subnet_plan(s, actual), *_firewall_plans(s, actual)]
    return resources


def plan_create(s: Settings, actual: Actual | None, *, startup_script: str) -> Plan:
    """Every resource `create` makes or reconciles, in dependency order. `actual=None`: offline."""
    if s.group_mode:
        from provisioner.cloud import group_plan

        return group_plan.plan_create(s, actual, startup_script=startup_script)
    resources = shared_plans(s, actual)
    image = _image_plan(s, actual)
    resources += [image] if image else []
    resources.append(_instance_plan(s, actual, startup_script))
    return Plan(s, "offline" if actual is None else "live", "create", resources)


def _destroy_instance(s: Settings, actual: Actual, delete_bucket: bool) -> list[ResourcePlan]:
    name = f"{s.zone}/{s.instance}"
    if actual.instance is None:
        return [ResourcePlan(Kind.INSTANCE, name, Action.NONE)]
    steps = []
    if actual.instance.deletion_protection:
        lift = compute_v1.SetDeletionProtectionInstanceRequest(
            project=s.project, zone=s.zone, resource=s.instance, deletion_protection=False
        )
        steps.append(Step(Method.SET_DELETION_PROTECTION, lift, "deletion protection is on: lift it first"))
    delete = compute_v1.DeleteInstanceRequest(project=s.project, zone=s.zone, instance=s.instance)
    steps.append(Step(Method.DELETE_INSTANCE, delete))
    return [ResourcePlan(Kind.INSTANCE, name, Action.DELETE, actual.instance, steps=steps)]


def _destroy_firewalls(s: Settings, actual: Actual, delete_bucket: bool) -> list[ResourcePlan]:
    plans = []
    for name, current in ((s.firewall_name, actual.firewall), (s.deny_firewall_name, actual.deny_firewall)):
        if current is None:
            plans.append(ResourcePlan(Kind.FIREWALL, name, Action.NONE))
            continue
        step = Step(
            Method.DELETE_FIREWALL, compute_v1.DeleteFirewallRequest(project=s.project, firewall=name)
        )
        plans.append(ResourcePlan(Kind.FIREWALL, name, Action.DELETE, current, steps=[step]))
    return plans


def _destroy_bucket_binding(s: Settings, actual: Actual, delete_bucket: bool) -> list[ResourcePlan]:
    """The VM account's binding leaves a kept bucket (a deleted bucket takes it along)."""
    member = service_account_member(s)
    bound = actual.bucket is not None and member in actual.bucket_members.get(VM_BUCKET_ROLE, set())
    if not bound or delete_bucket:
        return []
    change = IamChange(IamResource.BUCKET, s.bucket, VM_BUCKET_ROLE, member)
    step = Step(Method.REMOVE_MEMBER, change)
    name = f"gs://{s.bucket} {VM_BUCKET_ROLE} {member}"
    return [ResourcePlan(Kind.BUCKET_IAM_BINDING, name, Action.DELETE, change, steps=[step])]


def _destroy_service_account(s: Settings, actual: Actual, delete_bucket: bool) -> list[ResourcePlan]:
    email = s.service_account_email
    if actual.service_account is None:
        return [ResourcePlan(Kind.SERVICE_ACCOUNT, email, Action.NONE)]
    request = iam_admin_v1.DeleteServiceAccountRequest(name=names.service_account_path(s.project, email))
    step = Step(Method.DELETE_SERVICE_ACCOUNT, request)
    return [ResourcePlan(Kind.SERVICE_ACCOUNT, email, Action.DELETE, actual.service_account, steps=[step])]


def _destroy_bucket(s: Settings, actual: Actual, delete_bucket: bool) -> list[ResourcePlan]:
    name = f"gs://{s.bucket}"
    if actual.bucket is None:
        return [ResourcePlan(Kind.BUCKET, name, Action.NONE)]
    if not delete_bucket:
        notes = ["kept with its packages; pass --delete-bucket to delete it"]
        return [ResourcePlan(Kind.BUCKET, name, Action.KEEP, actual.bucket, notes=notes)]
    step = Step(Method.DELETE_BUCKET, s.bucket, "every object and version goes with it")
    notes = ["soft delete keeps deleted objects restorable for the retention period"]
    return [ResourcePlan(Kind.BUCKET, name, Action.DELETE, actual.bucket, steps=[step], notes=notes)]


def _keep_subnet(s: Settings, actual: Actual, delete_bucket: bool) -> list[ResourcePlan]:
    name = names.subnet_url(s.project, s.region, s.subnet)
    notes = ["Private Google Access stays on: the subnet may serve other VMs"]
    return [ResourcePlan(Kind.SUBNETWORK, name, Action.KEEP, notes=notes)]


# In dependency order: the instance before the firewall rules and the account it runs as; the bucket
# (and the subnet, which stays) last.
DESTROY_CHECKS = (
    _destroy_instance,
    _destroy_firewalls,
    _destroy_bucket_binding,
    _destroy_service_account,
    _destroy_bucket,
    _keep_subnet,
)


def plan_destroy(s: Settings, actual: Actual, *, delete_bucket: bool) -> Plan:
    """Instance (after lifting deletion protection), firewall, the account; the bucket only if asked."""
    resources = [r for check in DESTROY_CHECKS for r in check(s, actual, delete_bucket)]
    return Plan(s, "live", "destroy", resources)
