"""The two channels of one location: the Python index under `simple/` (the engine) and the conda
channel under `conda/`. One publish takes files for both, all or nothing; one name may live in both,
and then a command that takes a name must be told which (`--channel pypi|conda`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from provisioner.errors import PypapoError
from provisioner.repo import layout
from provisioner.repo.conda import layout as conda_layout
from provisioner.repo.conda.channel import Channel, load_packages
from provisioner.repo.engine import PublishResult, Repository, load_files

ChannelKind = Literal["pypi", "conda"]
CHANNEL_KINDS: tuple[ChannelKind, ...] = ("pypi", "conda")


def is_conda_file(path: str | Path) -> bool:
    return conda_layout.is_package_filename(Path(path).name)


def publish(
    repo: Repository, paths: Sequence[str | Path], *, skip_existing: bool = False, into_mirrored: bool = False
) -> PublishResult:
    """Validate every file (wheels, sdists, conda packages) and decide for the whole batch before
    anything is written: an invalid file or an immutable clash in either channel writes nothing."""
    conda_paths = [p for p in paths if is_conda_file(p)]
    python_paths = [p for p in paths if not is_conda_file(p)]
    packages = load_packages(conda_paths)
    dists = load_files(python_paths)
    if not packages:
        return repo.publish_dists(dists, skip_existing=skip_existing, into_mirrored=into_mirrored)
    repo.store.check()
    channel = Channel(repo.store, echo=repo.echo)
    plan = channel.plan(packages, skip_existing=skip_existing)  # raises before any write
    # The Python side decides (and refuses) before it writes, too; it goes first so that its refusal
    # leaves the conda side unwritten.
    result = (
        repo.publish_dists(dists, skip_existing=skip_existing, into_mirrored=into_mirrored)
        if dists
        else PublishResult()
    )
    # NGINX serves the location (the channel too) only once the root index exists.
    repo.initialize()
    for name in plan.already_present:
        repo.echo(f"{name} already present (same bytes), nothing to do")
    for name in plan.skipped:
        repo.echo(f"{name} exists with different bytes, skipped (--skip-existing)")
    result.published += channel.publish(plan)
    result.already_present += plan.already_present
    result.skipped += plan.skipped
    return result


def which(repo: Repository, name: str, choice: ChannelKind | None) -> ChannelKind:
    """The channel a name-taking command acts on: the one that holds `name`, or `choice` where both
    do (refused without it) or neither does (then the Python index, whose error names the fix)."""
    if choice is not None:
        return choice
    in_conda = Channel(repo.store).has(name)
    in_pypi = repo.store.stat(layout.project_json(layout.normalize(name))) is not None
    if in_conda and in_pypi:
        raise PypapoError(
            f"{name} is both a Python project and a conda package in {repo.store.location}: "
            "pass --channel pypi or --channel conda"
        )
    return "conda" if in_conda else "pypi"
