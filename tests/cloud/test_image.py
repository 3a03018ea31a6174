"""`provision image build`: the builder's and the image's real request objects, the clean-up on every
failure, and the deprecation policy."""

from __future__ import annotations

import datetime as dt

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from provisioner.cloud import plan
from provisioner.cloud.gcp.compute import Compute
from provisioner.cloud.image import plan as image_plan
from provisioner.cloud.image import run as image_run
from provisioner.cloud.settings import Settings
from provisioner.errors import PypapoError
from tests.doubles.compute import ComputeEngine, FakeClock, bake_done

NOW = dt.datetime(2026, 11, 25, 3, 0, 5, tzinfo=dt.UTC)
SCRIPT = "#!/bin/bash\n# the appliance's startup script\n"
TARGET = image_plan.ImageTarget(Settings(project="proj-123456", zone="europe-west1-b"))
BUILDER = image_plan.builder_name("pypapo", NOW)
IMAGE = image_plan.image_name("pypapo", NOW)


def layer(engine: ComputeEngine) -> Compute:
    return Compute(engine.clients())


def metadata(instance: compute_v1.Instance) -> dict[str, str]:
    return {i.key: i.value for i in instance.metadata.items}


# ------------------------------------------------------------------------------------ request objects


def test_builder_is_a_hardened_throwaway_vm_with_egress_only_for_the_build() -> None:
    _, _, steps = image_plan.build_steps(TARGET, NOW, SCRIPT)
    request = steps[0].request
    assert isinstance(request, compute_v1.InsertInstanceRequest)
    assert (request.project, request.zone) == ("proj-123456", "europe-west1-b")
    vm = request.instance_resource
    assert vm.name == BUILDER
    shielded = vm.shielded_instance_config
    assert shielded.enable_secure_boot and shielded.enable_vtpm and shielded.enable_integrity_monitoring
    (disk,) = vm.disks
    assert disk.boot and disk.auto_delete, "the disk must go with the builder"
    assert disk.initialize_params.source_image == "projects/debian-cloud/global/images/family/debian-12"
    (nic,) = vm.network_interfaces
    (access,) = nic.access_configs
    assert access.type_ == "ONE_TO_ONE_NAT" and not access.nat_i_p, "an ephemeral IP, never a reserved one"
    assert nic.subnetwork == "projects/proj-123456/regions/europe-west1/subnetworks/default"
    assert list(vm.service_accounts) == [], "the builder carries no Google credentials"
    assert not vm.deletion_protection and not vm.can_ip_forward
    meta = metadata(vm)
    assert SCRIPT in meta["startup-script"], "the appliance script runs verbatim inside the bake wrapper"
    assert 'bash "$appliance" bake' in meta["startup-script"]
    assert meta["pypapo-mode"] == "bake"
    # the appliance's hardening, from the one place it is defined
    for key, value in plan.HARDENING_METADATA.items():
        assert meta[key] == value
    assert meta["enable-oslogin"] == "TRUE" and meta["serial-port-enable"] == "FALSE"
    assert meta["block-project-ssh-keys"] == "TRUE" and meta["enable-guest-attributes"] == "TRUE"


def test_image_request_carries_family_labels_and_guest_os_features() -> None:
    image = image_plan.golden_image(
        TARGET, IMAGE, BUILDER, NOW, {"gcsfuse-version": "2.5.1", "nginx-version": "1.22.1-9+deb12u1"}
    )
    assert image.family == "pypapo"
    assert image.source_disk == f"projects/proj-123456/zones/europe-west1-b/disks/{BUILDER}"
    assert {f.type_ for f in image.guest_os_features} == {
        "UEFI_COMPATIBLE",
        "VIRTIO_SCSI_MULTIQUEUE",
        "GVNIC",
    }
    assert "shielded_instance_initial_state" not in image, "default Secure Boot keys trust Debian's shim"
    assert image.labels["pypapo-gcsfuse"] == "2_5_1"  # label values allow no dots or plus signs
    assert image.labels["pypapo-nginx"] == "1_22_1-9_deb12u1"
    assert image.labels["pypapo-build-date"] == "2026-11-25"
    assert image.labels["pypapo-format"] == "2"  # what a rollout checks before it deletes anything
    assert "gcsfuse 2.5.1" in image.description and "nginx 1.22.1-9+deb12u1" in image.description
    assert list(image.storage_locations) == ["europe-west1"]
    assert IMAGE == "pypapo-v20261125-030005"


def test_build_creates_the_image_stopped_and_leaves_nothing_behind() -> None:
    api = ComputeEngine()
    api.guest[BUILDER] = bake_done()
    clock = FakeClock()
    result = image_run.run_build(layer(api), TARGET, NOW, SCRIPT, clock=clock, sleep=clock.sleep)
    assert result.image == IMAGE
    names = api.call_names()
    assert names.index("instances.stop") < names.index("images.insert"), (
        "image from a stopped, consistent disk"
    )
    (insert,) = api.requests("images.insert")
    assert insert.force_create is False
    assert api.images[IMAGE].labels["pypapo-gcsfuse"] == "2_5_1"
    assert api.instances == {} and api.disks == {}


# --------------------------------------------------------------------------------- failure at each step


def _fails_bake(api: ComputeEngine) -> None:
    api.guest[BUILDER] = lambda: {"bake": "failed", "error": "apt-get upgrade failed"}


def _never_bakes(api: ComputeEngine) -> None:
    api.guest[BUILDER] = lambda: {}


@pytest.mark.parametrize(
    ("step", "inject"),
    [
        (
            "create the builder",
            lambda api: api.fail.update(
                {"instances.insert": gexc.Forbidden("Required 'compute.instances.create' permission")}
            ),
        ),
        ("wait for the bake", _fails_bake),
        ("wait for the bake", _never_bakes),
        (
            "stop the builder",
            lambda api: api.fail.update({"instances.stop": gexc.ServiceUnavailable("backend error")}),
        ),
        (
            "create the image",
            lambda api: api.fail.update({"images.insert": gexc.ResourceExhausted("Quota 'IMAGES' exceeded")}),
        ),
        (
            "deprecate older images",
            lambda api: api.fail.update({"images.deprecate": gexc.Forbidden("compute.images.deprecate")}),
        ),
    ],
    ids=["insert-builder", "bake-failed", "bake-timeout", "stop", "create-image", "deprecate"],
)
def test_builder_and_disk_are_deleted_whatever_step_fails(step, inject, tmp_path) -> None:
    api = ComputeEngine()
    api.add_image("pypapo-v20261001-000000", dt.datetime(2026, 10, 1, tzinfo=dt.UTC))
    api.guest[BUILDER] = bake_done()
    api.serial[BUILDER] = "startup-script: apt-get: E: Unable to fetch some archives\n"
    inject(api)
    clock = FakeClock()
    logs = []

    def save_log(name: str, text: str) -> str:
        path = tmp_path / f"{name}.log"
        path.write_text(text)
        logs.append(path)
        return str(path)

    with pytest.raises(PypapoError) as err:
        image_run.run_build(
            layer(api), TARGET, NOW, SCRIPT, clock=clock, sleep=clock.sleep, save_log=save_log
        )
    message = str(err.value)
    assert "\n" not in message
    assert f"failed at '{step}'" in message
    assert f"builder {BUILDER} and its disk deleted" in message
    assert BUILDER not in api.instances and BUILDER not in api.disks
    assert compute_v1.DeleteInstanceRequest(
        project=TARGET.project, zone=TARGET.zone, instance=BUILDER
    ) in api.requests("instances.delete")
    if step == "wait for the bake":
        assert logs and "serial console log saved" in message, "the builder's log must outlive it"
        assert "Unable to fetch" in logs[0].read_text()
    if step == "deprecate older images":
        assert f"image {IMAGE} was created" in message


def test_a_disk_left_by_a_failed_insert_is_deleted_too() -> None:
    api = ComputeEngine()
    # the insert failed after Compute Engine had made the boot disk
    api.disks.add(f"zones/{TARGET.zone}", BUILDER, compute_v1.Disk(name=BUILDER))
    api.fail["instances.insert"] = gexc.BadRequest("Invalid value for field 'resource.networkInterfaces[0]'")
    with pytest.raises(PypapoError):
        image_run.run_build(layer(api), TARGET, NOW, SCRIPT)
    assert api.disks == {}
    assert api.requests("disks.delete")[0].disk == BUILDER


def test_a_failed_clean_up_is_reported_with_the_command_that_finishes_it() -> None:
    api = ComputeEngine()
    api.guest[BUILDER] = bake_done()
    api.fail["instances.stop"] = gexc.InternalServerError("boom")
    api.fail["instances.delete"] = gexc.Forbidden("compute.instances.delete")
    with pytest.raises(PypapoError) as err:
        image_run.run_build(layer(api), TARGET, NOW, SCRIPT, clock=FakeClock(), sleep=lambda s: None)
    message = str(err.value)
    assert "failed at 'stop the builder'" in message and "boom" in message, "the first failure stays visible"
    assert f"gcloud compute instances delete {BUILDER} --zone=europe-west1-b --project=proj-123456" in message


def test_interrupting_the_build_still_deletes_the_builder() -> None:
    api = ComputeEngine()

    def interrupted() -> dict[str, str]:
        raise KeyboardInterrupt

    api.guest[BUILDER] = interrupted
    with pytest.raises(KeyboardInterrupt):
        image_run.run_build(layer(api), TARGET, NOW, SCRIPT)
    assert api.instances == {} and api.disks == {}


# ------------------------------------------------------------------------------------------ deprecation


def _image(name: str, created: str, state: str = "ACTIVE", replacement: str = "") -> compute_v1.Image:
    image = compute_v1.Image(name=name, family="pypapo", status="READY", creation_timestamp=created)
    if state != "ACTIVE":
        image.deprecated = compute_v1.DeprecationStatus(state=state, replacement=replacement)
    return image


def test_deprecation_keeps_the_newest_n_by_creation_time_not_by_name() -> None:
    images = [
        # names sort the opposite way from creation times; offsets differ, so string order lies too
        _image("pypapo-a", "2026-11-25T03:00:00.000-08:00"),  # newest: 11:00 UTC
        _image("pypapo-z", "2026-11-25T10:00:00.000+00:00"),  # 10:00 UTC
        _image("pypapo-m", "2026-11-25T18:30:00.000+09:00"),  # 09:30 UTC (the latest by string)
        _image("pypapo-b", "2026-11-18T03:00:00.000-08:00"),
        _image("pypapo-c", "2026-11-11T03:00:00.000-08:00", "DEPRECATED"),
    ]
    changes = {d.image: d for d in image_plan.plan_deprecations("proj-123456", images, "pypapo-a", keep=2)}
    assert set(changes) == {"pypapo-z", "pypapo-m", "pypapo-b", "pypapo-c"}
    assert changes["pypapo-z"].state == "DEPRECATED"  # kept for rollback: the second newest instant
    assert changes["pypapo-m"].state == changes["pypapo-b"].state == changes["pypapo-c"].state == "OBSOLETE"
    request = changes["pypapo-z"].request
    assert isinstance(request, compute_v1.DeprecateImageRequest)
    assert request.image == "pypapo-z"
    assert request.deprecation_status_resource.replacement == "projects/proj-123456/global/images/pypapo-a"


def test_deprecation_never_obsoletes_the_image_the_appliance_runs_and_is_idempotent() -> None:
    new = "projects/proj-123456/global/images/pypapo-new"
    images = [
        _image("pypapo-new", "2026-11-25T03:00:00Z"),
        _image("pypapo-2", "2026-11-18T03:00:00Z", "DEPRECATED", new),
        _image("pypapo-3", "2026-11-11T03:00:00Z", "OBSOLETE", new),
        _image("pypapo-4", "2026-11-04T03:00:00Z"),
    ]
    changes = image_plan.plan_deprecations("proj-123456", images, "pypapo-new", keep=2, protect=["pypapo-4"])
    assert [(c.image, c.state) for c in changes] == [("pypapo-4", "DEPRECATED")]


def test_an_image_missing_from_the_listing_is_an_error_not_a_silent_no_op() -> None:
    with pytest.raises(PypapoError, match="not in the family"):
        image_plan.plan_deprecations("p", [_image("pypapo-1", "2026-11-25T03:00:00Z")], "pypapo-2", keep=3)


def test_build_deprecates_through_the_api_and_the_family_resolves_to_the_new_image() -> None:
    api = ComputeEngine()
    for week in range(4):
        api.add_image(f"pypapo-old{week}", dt.datetime(2026, 10, 1 + 7 * week, tzinfo=dt.UTC))
    api.guest[BUILDER] = bake_done()
    image_run.run_build(layer(api), TARGET, NOW, SCRIPT, clock=FakeClock(), sleep=lambda s: None)
    states = {name: image_plan.image_state(i) for name, i in api.images.items()}
    assert states == {
        IMAGE: "ACTIVE",
        "pypapo-old3": "DEPRECATED",
        "pypapo-old2": "DEPRECATED",
        "pypapo-old1": "OBSOLETE",
        "pypapo-old0": "OBSOLETE",
    }
    assert image_plan.newest_usable(list(api.images.values())).name == IMAGE


def test_image_list_rows_show_age_state_and_the_serving_image() -> None:
    images = [
        _image("pypapo-1", "2026-11-18T03:00:00Z", "DEPRECATED"),
        _image("pypapo-2", "2026-11-25T03:00:00Z"),
    ]
    rows = image_plan.image_rows(images, "pypapo-1", dt.datetime(2026, 11, 26, 4, tzinfo=dt.UTC))
    assert [(r.name, r.age_days, r.state, r.serving) for r in rows] == [
        ("pypapo-2", 1, "ACTIVE", False),
        ("pypapo-1", 8, "DEPRECATED", True),
    ]


def test_bad_family_and_keep_fail_up_front() -> None:
    with pytest.raises(PypapoError, match="--image-family"):
        image_plan.ImageTarget(Settings(project="p", zone="europe-west1-b", image_family="Pypapo_Images"))
    with pytest.raises(PypapoError, match="--keep"):
        image_plan.ImageTarget(Settings(project="p", zone="europe-west1-b"), keep=0)
