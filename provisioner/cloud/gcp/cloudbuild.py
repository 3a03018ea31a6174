"""Thin layer: start the rebuild build now (`provision image schedule --run-now`).

The scheduled job posts the same `cloudbuild_v1.Build` to the same regional endpoint; running it once by
hand proves the service accounts and roles before the first unattended night.
"""

from __future__ import annotations

from typing import Any

from google.cloud.devtools import cloudbuild_v1

from provisioner.cloud.gcp.base import CLOUDBUILD_API, Clients, gcp_errors


def _cloudbuild(credentials: Any) -> Any:
    return cloudbuild_v1.CloudBuildClient(credentials=credentials)


Clients.register("cloudbuild", CLOUDBUILD_API, _cloudbuild)


def create_build_request(
    project: str, region: str, build: cloudbuild_v1.Build
) -> cloudbuild_v1.CreateBuildRequest:
    return cloudbuild_v1.CreateBuildRequest(
        parent=f"projects/{project}/locations/{region}", project_id=project, build=build
    )


def start_build(clients: Clients, region: str, build: cloudbuild_v1.Build) -> str:
    """Create the build and return its id without waiting (the rebuild takes tens of minutes)."""
    request = create_build_request(clients.project, region, build)
    with gcp_errors("start the rebuild build", project=clients.project, api=CLOUDBUILD_API):
        op = clients.get("cloudbuild").create_build(request=request)
        return op.metadata.build.id
