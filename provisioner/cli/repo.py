"""Commands: publish, yank, unyank, remove, list, reindex (the repository engine)."""

from __future__ import annotations

import datetime as dt
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from provisioner.errors import PypapoError, counted, human_size, one_line
from provisioner.repo import channels
from provisioner.repo.conda.channel import Channel
from provisioner.repo.engine import Repository
from provisioner.repo.reindex import Progress

repo_option = click.option(
    "--repo",
    "location",
    envvar="PYPAPO_REPO",
    required=True,
    metavar="LOCATION",
    help="gs://BUCKET[/PREFIX] or a directory (env PYPAPO_REPO).",
)


channel_option = click.option(
    "--channel",
    type=click.Choice(channels.CHANNEL_KINDS),
    default=None,
    help="pypi or conda: which channel NAME is in, where the location has it in both.",
)


def _open(location: str) -> Repository:
    return Repository.open(location, echo=click.echo, notify=lambda line: click.echo(line, err=True))


# A reindex shorter than this says nothing before its summary; a longer one shows its progress.
PROGRESS_AFTER = 2.0
# In a log, a listing still going on says so this often (it has no total to count tenths of).
LISTING_EVERY = 10.0


def _reindex_progress(what: str = "reindex", units: str = "projects") -> Callable[[Progress], None]:
    """A reindex's progress (`what`: the index's, the conda channel's) on stderr once it has run
    PROGRESS_AFTER seconds. While it lists: on a terminal a count rewritten in place, in a log (CI)
    a line every LISTING_EVERY seconds. Then a bar of the `units` done on a terminal, in a log a
    line each tenth of them."""
    start = time.monotonic()
    bar: Any = None
    tenths = -1
    counting = False  # a listing count is on the terminal's last line
    last_line = 0.0

    def tell(p: Progress) -> None:
        nonlocal bar, tenths, counting, last_line
        now = time.monotonic()
        tty = sys.stderr.isatty()
        if p.total is None:
            if now - start < PROGRESS_AFTER:
                return
            if tty:
                click.echo(f"\r{what}: listing the repository, {p.listed:,} objects", nl=False, err=True)
                counting = True
            elif now - last_line >= LISTING_EVERY:
                click.echo(f"{what}: listing the repository, {p.listed:,} objects so far", err=True)
                last_line = now
            return
        if counting:  # the listing's count ends its line; the bar starts below it
            click.echo(f"\r{what}: listed {p.listed:,} objects", err=True)
            counting = False
        total, done = p.total, p.done
        if tenths < 0 and (done >= total or now - start < PROGRESS_AFTER):
            return  # nothing shown yet, and nothing worth showing
        tenth = done * 10 // total
        if tty:
            if bar is None:
                bar = click.progressbar(length=total, label=f"{what}: {total:,} {units}", file=sys.stderr)
                bar.__enter__()
            bar.update(done - bar.pos)
            if done >= total:
                bar.__exit__(None, None, None)
        elif tenth > tenths:
            click.echo(f"{what}: {done:,} of {total:,} {units}", err=True)
        tenths = max(tenths, tenth)

    return tell


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
    """Publish wheels, sdists and conda packages (.conda, .tar.bz2). Every file is validated first;
    a batch is all or nothing."""
    result = channels.publish(
        _open(location), files, skip_existing=skip_existing, into_mirrored=into_mirrored
    )
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
    click.echo(
        f"yanked {counted(count, 'file')} of {name} {version}"
        if count
        else f"{name} {version} already yanked"
    )


@click.command()
@repo_option
@click.argument("name")
@click.argument("version")
@_friendly
def unyank(location: str, name: str, version: str) -> None:
    """Undo a yank of NAME VERSION."""
    count = _open(location).set_yanked(name, version, None, yanked=False)
    click.echo(
        f"unyanked {counted(count, 'file')} of {name} {version}"
        if count
        else f"{name} {version} is not yanked"
    )


@click.command()
@repo_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@channel_option
@click.argument("name")
@click.argument("version", required=False)
@_friendly
def remove(
    location: str, yes: bool, channel: channels.ChannelKind | None, name: str, version: str | None
) -> None:
    """Remove NAME VERSION, or the whole project NAME. Prefer `yank`: removal breaks pinned installs.
    A conda package leaves the index (repodata's `removed` list); its file stays for lock files."""
    repo = _open(location)
    if channels.which(repo, name, channel) == "conda":
        _remove_conda(Channel(repo.store), yes, name, version)
        return
    state = repo.project(name)
    what = (
        f"{state.name} {version}" if version else f"all {counted(len(state.files), 'file')} of {state.name}"
    )
    if not yes and not click.confirm(f"remove {what} from {repo.store.location}?", default=False):
        raise PypapoError("nothing removed (pass --yes to skip this question)")
    removed = repo.remove(name, version)
    for filename in removed:
        click.echo(f"removed {one_line(filename)}")
    click.echo(f"removed {counted(len(removed), 'file')}")


def _remove_conda(channel: Channel, yes: bool, name: str, version: str | None) -> None:
    files = channel.files(name)
    what = f"conda package {name} {version}" if version else f"all {len(files)} conda packages of {name}"
    if not yes and not click.confirm(f"remove {what} from {channel.store.location}?", default=False):
        raise PypapoError("nothing removed (pass --yes to skip this question)")
    removed = channel.remove(name, version)
    for filename in removed:
        click.echo(f"removed conda/{filename} from the index (the file stays for lock files)")
    click.echo(f"removed {len(removed)} conda packages")


@click.command(name="list")
@repo_option
@channel_option
@click.argument("name", required=False)
@_friendly
def list_(location: str, channel: channels.ChannelKind | None, name: str | None) -> None:
    """List projects (mirrored ones say from where) and conda packages, or the files of NAME with
    version, size and state."""
    repo = _open(location)
    conda = Channel(repo.store)
    if name is None:
        projects = repo.projects() if channel != "conda" else []
        origins = repo.mirror_origins(projects)
        for project in projects:
            mark = f"  (mirrored from {one_line(origins[project])})" if project in origins else ""
            click.echo(one_line(project) + mark)
        packages = conda.channeldata() if channel != "pypi" else {}
        for package, entry in sorted(packages.items()):
            click.echo(f"{package}  (conda: {', '.join(entry['subdirs'])})" if channel is None else package)
        if not projects and not packages:
            # Say so on stderr: stdout stays a clean list for scripts, and a typo in --repo is visible.
            click.echo(
                f"no projects in {location}: publish one with `provision publish --repo {location} FILE`",
                err=True,
            )
        return
    if channels.which(repo, name, channel) == "conda":
        for c in conda.files(name):
            stamp = dt.datetime.fromtimestamp(c.timestamp_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(f"{c.version}  {c.subdir}/{c.filename}  {human_size(c.size)}  {stamp}")
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
@click.option(
    "--site-remote-images/--no-site-remote-images",
    "site_remote_images",
    default=None,
    help="Show README images from https URLs on the site (each reader's browser then fetches them "
    "from their hosts; nginx's policy for /ui/ allows exactly that), or stop showing them. Stored in "
    "the repository (ui/remote-images) for every later publish; default: leave the setting as it is "
    "(off unless turned on).",
)
@_friendly
def reindex(location: str, verify: bool, site_remote_images: bool | None) -> None:
    """Rebuild every page from the stored files (after manual edits), keeping yanks and upload times;
    and the conda channel's repodata, shards and channeldata from its packages, keeping `removed`."""
    repo = _open(location)
    result = repo.reindex(verify=verify, site_remote_images=site_remote_images, progress=_reindex_progress())
    conda = Channel(repo.store).reindex(
        verify=verify, progress=_reindex_progress("conda reindex", "packages")
    )
    for line in result.ignored + conda.ignored:
        click.echo(f"warning: ignored {one_line(line)}", err=True)
    click.echo(result.summary())
    if repo.site is not None:
        shown = "shown (https only)" if repo.site.remote_images else "not shown"
        click.echo(f"site: README images from other hosts {shown}")
    if conda.subdirs:
        click.echo(conda.summary())


COMMANDS: list[click.Command] = [publish, yank, unyank, remove, list_, reindex]
