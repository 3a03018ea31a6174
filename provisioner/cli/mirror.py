"""Command: mirror (public distributions into the repository, verified), and `mirror schedule`."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from provisioner.cli.repo import _friendly, repo_option
from provisioner.errors import PypapoError


def _progress(total: int) -> Callable[[int], None]:
    """A byte progress bar on stderr when it is a terminal; one line otherwise (CI logs)."""
    from provisioner.errors import human_size

    if not sys.stderr.isatty():
        click.echo(f"downloading {human_size(total)}", err=True)
        return lambda _n: None
    bar = click.progressbar(length=total, label=f"downloading {human_size(total)}", file=sys.stderr)
    bar.__enter__()
    lock = threading.Lock()
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        with lock:
            bar.update(n)
            done += n
            if done >= total:
                bar.__exit__(None, None, None)

    return tick


class _MirrorCommand(click.Command):
    """`provision mirror ...`, and `provision mirror schedule ...` as its subcommand."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        if args and args[0] == "schedule":
            from provisioner.cli.mirror_schedule import schedule_command

            return schedule_command.make_context("schedule", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@click.command("mirror", cls=_MirrorCommand)
@repo_option
@click.option(
    "--from",
    "source",
    default="https://pypi.org/simple/",
    show_default=True,
    metavar="URL",
    help="the PEP 503/691 index to mirror from (a company proxy works too)",
)
@click.option(
    "-r", "--requirement", "requirement_files", multiple=True, metavar="FILE", help="requirements file"
)
@click.option(
    "--lock",
    "lock",
    metavar="FILE|gs://BUCKET/OBJECT",
    help="a lock file taken as it is: uv.lock, pylock.toml, poetry.lock, requirements.txt with --hash",
)
@click.option(
    "--python-version", "pythons", multiple=True, metavar="3.X", help="keep files for these (repeat)"
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="TAG",
    help="keep files for these: linux_x86_64, manylinux_2_28_aarch64, macosx, win_amd64, ... (repeat)",
)
@click.option("--no-sdist", is_flag=True, help="wheels only")
@click.option("--dry-run", is_flag=True, help="say what would be added; download and write nothing")
@click.option("--jobs", default=8, show_default=True, type=click.IntRange(1, 64), help="concurrent downloads")
@click.argument("requirements", nargs=-1)
@_friendly
def mirror_command(
    location: str,
    source: str,
    requirement_files: tuple[str, ...],
    lock: str | None,
    pythons: tuple[str, ...],
    platforms: tuple[str, ...],
    no_sdist: bool,
    dry_run: bool,
    jobs: int,
    requirements: tuple[str, ...],
) -> None:
    """Mirror public distributions into the repository: REQUIREMENT... (resolved with their whole
    closure, every platform and marker) or --lock FILE (taken as it is). Every byte is checked
    against the upstream's sha256 (and the lock's); a mismatch writes nothing. A re-run downloads only
    what is new. `provision mirror schedule --help`: run it on a schedule in Cloud Build."""
    import time

    from provisioner.repo import mirror, narrow
    from provisioner.repo.engine import Repository
    from provisioner.repo.upstream import Upstream

    started = time.monotonic()
    if lock and (requirements or requirement_files):
        raise PypapoError("give requirements or --lock, not both")
    upstream = Upstream(source)
    n = narrow.make(pythons, platforms, no_sdist)
    repo = Repository.open(location)
    repo.store.check()
    if lock:
        pins = mirror.read_lock(lock, upstream.shown)
        where = lock
    else:
        reqs = list(requirements)
        for path in requirement_files:
            reqs += mirror.read_requirements(path)
        if not reqs:
            raise PypapoError("nothing to mirror: give REQUIREMENT..., -r FILE or --lock FILE")
        click.echo(f"resolving {' '.join(reqs)} on {upstream.shown} (universal: every platform)", err=True)
        pins = mirror.resolve(reqs, upstream, n)
        where = upstream.shown
    result = mirror.mirror(
        repo,
        upstream,
        pins,
        n,
        where=where,
        dry_run=dry_run,
        echo=click.echo,
        progress=_progress,
        workers=jobs,
        started=started,
    )
    click.echo(result.summary())


COMMANDS: list[click.Command] = [mirror_command]
