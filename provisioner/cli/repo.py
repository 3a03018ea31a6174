"""Commands: publish, yank, unyank, remove, list, reindex (the repository engine)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from provisioner.errors import PypapoError, one_line
from provisioner.repo.engine import Repository, human_size

repo_option = click.option(
    "--repo",
    "location",
    envvar="PYPAPO_REPO",
    required=True,
    metavar="LOCATION",
    help="gs://BUCKET[/PREFIX] or a directory (env PYPAPO_REPO).",
)


def _open(location: str) -> Repository:
    return Repository.open(location, echo=click.echo, notify=lambda line: click.echo(line, err=True))


def _friendly(fn: Callable[..., None]) -> Callable[..., None]:
    """Local file-system failures (permissions, full disk) as one line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except BrokenPipeError:
            raise  # the reader of our output went away: not a failure to report (see provisioner.cli)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise PypapoError(f"{where}{exc.strerror or exc}") from None

    return wrapper


@click.command()
@repo_option
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Skip files whose name already exists with other bytes (re-run CI jobs) instead of failing. "
    "The same bytes again are always a no-op.",
)
@click.option(
    "--into-mirrored",
    is_flag=True,
    help="Publish into a project mirrored from a public index (`provision mirror`), mixing your files "
    "with the upstream's. Refused without this flag.",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_friendly
def publish(location: str, skip_existing: bool, into_mirrored: bool, files: tuple[str, ...]) -> None:
    """Publish wheels and sdists. Every file is validated first; a batch is all or nothing."""
    result = _open(location).publish(files, skip_existing=skip_existing, into_mirrored=into_mirrored)
    click.echo(result.summary())


@click.command()
@repo_option
@click.option("--reason", default=None, help="Why it is yanked (shown by pip).")
@click.argument("name")
@click.argument("version")
@_friendly
def yank(location: str, reason: str | None, name: str, version: str) -> None:
    """Yank every file of NAME VERSION (pip skips it unless pinned exactly)."""
    count = _open(location).set_yanked(name, version, reason, yanked=True)
    click.echo(f"yanked {count} files of {name} {version}" if count else f"{name} {version} already yanked")


@click.command()
@repo_option
@click.argument("name")
@click.argument("version")
@_friendly
def unyank(location: str, name: str, version: str) -> None:
    """Undo a yank of NAME VERSION."""
    count = _open(location).set_yanked(name, version, None, yanked=False)
    click.echo(f"unyanked {count} files of {name} {version}" if count else f"{name} {version} is not yanked")


@click.command()
@repo_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.argument("name")
@click.argument("version", required=False)
@_friendly
def remove(location: str, yes: bool, name: str, version: str | None) -> None:
    """Remove NAME VERSION, or the whole project NAME. Prefer `yank`: removal breaks pinned installs."""
    repo = _open(location)
    state = repo.project(name)
    what = f"{state.name} {version}" if version else f"all {len(state.files)} files of {state.name}"
    if not yes and not click.confirm(f"remove {what} from {repo.store.location}?", default=False):
        raise PypapoError("nothing removed (pass --yes to skip this question)")
    removed = repo.remove(name, version)
    for filename in removed:
        click.echo(f"removed {one_line(filename)}")
    click.echo(f"removed {len(removed)} files")


@click.command(name="list")
@repo_option
@click.argument("name", required=False)
@_friendly
def list_(location: str, name: str | None) -> None:
    """List projects (mirrored ones say from where), or the files of project NAME with version, size
    and yanked state."""
    repo = _open(location)
    if name is None:
        projects = repo.projects()
        origins = repo.mirror_origins(projects)
        for project in projects:
            mark = f"  (mirrored from {one_line(origins[project])})" if project in origins else ""
            click.echo(one_line(project) + mark)
        if not projects:
            # Say so on stderr: stdout stays a clean list for scripts, and a typo in --repo is visible.
            click.echo(
                f"no projects in {location}: publish one with `provision publish --repo {location} FILE`",
                err=True,
            )
        return
    state = repo.project(name)
    if state.mirrored_from:
        click.echo(f"# {state.name} is mirrored from {one_line(state.mirrored_from)}", err=True)
    for f in state.files:
        yanked = f.yanked
        mark = "" if yanked is False else (f"  yanked: {yanked}" if isinstance(yanked, str) else "  yanked")
        click.echo(f"{f.version}  {f.filename}  {human_size(f.size)}  {f.upload_time}{mark}")


@click.command()
@repo_option
@click.option(
    "--verify",
    is_flag=True,
    help="Download and rehash every file, instead of trusting recorded hashes whose stored "
    "fingerprint (GCS size+md5/crc32c, directory size+mtime) is unchanged.",
)
@_friendly
def reindex(location: str, verify: bool) -> None:
    """Rebuild every page from the stored files (after manual edits), keeping yanks and upload times."""
    result = _open(location).reindex(verify=verify)
    for line in result.ignored:
        click.echo(f"warning: ignored {one_line(line)}", err=True)
    click.echo(result.summary())


COMMANDS: list[click.Command] = [publish, yank, unyank, remove, list_, reindex]
