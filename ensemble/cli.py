"""The `ensemble` command line. Thin: parse, call a plain function, print.

Bad input (spec keys, arguments, credentials) ends in one line on stderr and exit
code 2; operational failures in one line and exit code 1; never a traceback
(set ENSEMBLE_DEBUG=1 to get one).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import click

from ensemble import __version__
from ensemble.errors import EnsembleError, UsageError
from ensemble.spec import MAX_SHARDS, FleetSpec, check_spec_files, default_spec, load_spec

MAX_WAIT = 7 * 86400  # --timeout: a week of waiting for drains is already more than any meeting


def _fail(exc: BaseException, code: int) -> None:
    if os.environ.get("ENSEMBLE_DEBUG"):
        raise exc
    click.echo(f"ensemble: error: {one_line(str(exc))}", err=True)
    sys.exit(code)


def one_line(message: str, limit: int = 1000) -> str:
    """An error message as one printable line: control characters escaped, length bounded.

    A hostile argument or key name echoed in an error cannot add lines or drive the terminal.

    Example::

        one_line("fleet drain: no shard 'x\\ny'")   # "fleet drain: no shard 'x\\ny'" (escaped)
    """
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def handle_errors(fn):
    """Turn EnsembleError into one line + exit code; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EnsembleError as exc:
            _fail(exc, exc.exit_code)
        except KeyboardInterrupt:
            click.echo("ensemble: interrupted", err=True)
            sys.exit(130)

    return wrapper


def config_option(fn):
    return click.option(
        "--config", "-c", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Fleet spec (ensemble.toml). Default: the embedded local 2-shard fleet.",
    )(fn)


def wait_lock_option(fn):
    return click.option(
        "--wait-lock", "wait_lock", type=click.IntRange(0, 86400), default=0, metavar="SECONDS",
        help="Wait up to SECONDS for another command holding the fleet's lock (default: stop at once).",
    )(fn)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


def get_spec(config: Path | None, files: bool = False) -> FleetSpec:
    """The spec (--config or the embedded default); with files, every file it names is checked too
    (commands that create or deploy hosts: a bad file is refused before anything is created)."""
    spec = load_spec(config) if config else default_spec()
    if files:
        check_spec_files(spec)
    warning = spec.profile.eol_warning
    if warning:
        click.echo(f"ensemble: warning: {warning}", err=True)
    return spec


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def not_built(what: str, issue: int) -> None:
    raise EnsembleError(f"'{what}' is not built yet (tracked in issue {issue})")


class ErrorsAsUsage(click.Group):
    """A click group whose usage errors are one line and exit code 2, like spec errors."""

    def main(self, *args, **kwargs):
        kwargs.setdefault("standalone_mode", True)
        try:
            return super().main(*args, standalone_mode=False, **{k: v for k, v in kwargs.items()
                                                                 if k != "standalone_mode"})
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(2)
        except click.UsageError as exc:
            _fail(UsageError(exc.format_message()), 2)
        except click.exceptions.Abort:
            click.echo("ensemble: aborted", err=True)
            sys.exit(1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except EnsembleError as exc:
            _fail(exc, exc.exit_code)


@click.group(cls=ErrorsAsUsage)
@click.version_option(__version__, prog_name="ensemble")
def main() -> None:
    """ensemble: build and run a fleet of Jitsi Meet servers."""


# ---------------------------------------------------------------- render

@main.command()
@config_option
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write DIR/<host>/<absolute path> into.")
@click.option("--secrets", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Secrets file (JSON, mode 0600); created once when missing. "
                   "Default: .ensemble/<fleet>/secrets.json beside the spec.")
@handle_errors
def render(config: Path | None, out: Path, secrets: Path | None) -> None:
    """Write every file of every host, exactly as deploy writes them (review with diff -r)."""
    spec = get_spec(config)
    from ensemble.outtree import OwnedTree
    from ensemble.render import render_fleet_to
    from ensemble.secrets import load_or_create_secrets, secrets_path_for

    OwnedTree.check(out, "--out")  # a folder render may not write into is refused before any secret is made
    store = load_or_create_secrets(secrets or secrets_path_for(spec), spec)
    written = render_fleet_to(spec, store, out)
    click.echo(f"rendered {len(written)} files for {spec.fleet.shards} shard(s) and the front door into {out}")


# ---------------------------------------------------------------- deploy / plan

@main.command()
@config_option
@click.option("--allow-disruptive", is_flag=True,
              help="Apply changes that disrupt the live fleet (domain, TLS mode, shard naming, OS profile).")
@wait_lock_option
@json_option
@handle_errors
def deploy(config: Path | None, allow_disruptive: bool, wait_lock: int, as_json: bool) -> None:
    """Create missing hosts, deploy every shard and the front door."""
    from ensemble.fleet import deploy_fleet, summary_table

    spec = get_spec(config, files=True)
    # Progress goes to stderr so that --json leaves stdout to the machine-readable result.
    result = deploy_fleet(spec, progress=lambda line: click.echo(line, err=True), allow_disruptive=allow_disruptive,
                          wait_lock=wait_lock)
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(summary_table(result))
    if not result.ok:
        sys.exit(1)


@main.command()
@config_option
@json_option
@handle_errors
def plan(config: Path | None, as_json: bool) -> None:
    """Show what deploy would change (hosts to create, file and package changes)."""
    from ensemble.fleet import deploy_fleet, summary_table

    spec = get_spec(config, files=True)
    result = deploy_fleet(spec, dry=True, progress=lambda line: click.echo(line, err=True))
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(summary_table(result))
        for name, host_result in sorted(result.results.items()):
            for change in host_result.changes:
                click.echo(f"  {name}: {change}")
    if not result.ok:
        sys.exit(1)


@main.command()
@config_option
@click.option("--timeout", type=click.IntRange(1, MAX_WAIT), default=3600, show_default=True,
              help="Seconds to wait for each shard to empty.")
@wait_lock_option
@json_option
@handle_errors
def upgrade(config: Path | None, timeout: int, wait_lock: int, as_json: bool) -> None:
    """Rolling upgrade: drain, wait empty, redeploy, check, undrain; one shard at a time."""
    from ensemble.lifecycle import upgrade_fleet

    results = upgrade_fleet(get_spec(config, files=True), timeout, progress=lambda line: click.echo(line, err=True),
                            wait_lock=wait_lock)
    if as_json:
        print_json({"upgraded": results})
    else:
        click.echo(f"upgraded {len(results)} shard(s): {', '.join(r['shard'] for r in results)}")


# ---------------------------------------------------------------- fleet

@main.group()
def fleet() -> None:
    """List, scale, drain and destroy the fleet's hosts."""


@fleet.command("list")
@config_option
@json_option
@click.option("--hosts-file", is_flag=True,
              help="Print /etc/hosts lines for the fleet's names (to open a local fleet in a browser).")
@handle_errors
def fleet_list(config: Path | None, as_json: bool, hosts_file: bool) -> None:
    """The fleet's hosts as the provider reports them."""
    from ensemble.lifecycle import format_table, list_fleet
    from ensemble.lifecycle import hosts_file as hosts_file_lines

    spec = get_spec(config)
    rows = list_fleet(spec)
    if hosts_file:
        click.echo(hosts_file_lines(spec, rows))
    elif as_json:
        print_json(rows)
    else:
        click.echo(format_table(rows, ("name", "role", "shard", "address", "state", "created")))


@fleet.command("scale")
@config_option
@click.argument("count", type=int)
@click.option("--force", is_flag=True, help="Remove shards even if they may host meetings.")
@click.option("--timeout", type=click.IntRange(1, MAX_WAIT), default=3600, show_default=True,
              help="Seconds to wait for drains.")
@click.option("--hosts-only", is_flag=True, help="Only create/destroy hosts; deploy later with `ensemble deploy`.")
@wait_lock_option
@json_option
@handle_errors
def fleet_scale(config: Path | None, count: int, force: bool, timeout: int, hosts_only: bool, wait_lock: int,
                as_json: bool) -> None:
    """Grow or shrink the fleet to COUNT shards (shrinking drains the highest numbers first)."""
    from ensemble.lifecycle import scale_fleet

    # Growing deploys the new shards; shrinking drains the surplus through the front door and waits.
    result = scale_fleet(get_spec(config, files=True), count, force=force, timeout=timeout, deploy=not hosts_only,
                         progress=lambda line: click.echo(line, err=True), wait_lock=wait_lock)
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(f"{len(result.hosts)} host(s); created: {', '.join(result.created) or 'none'}; "
                   f"removed: {', '.join(result.removed) or 'none'}")


@fleet.command("destroy")
@config_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@wait_lock_option
@handle_errors
def fleet_destroy(config: Path | None, yes: bool, wait_lock: int) -> None:
    """Destroy every host of the fleet with its addresses and volumes."""
    from ensemble.lifecycle import destroy_fleet

    names = destroy_fleet(get_spec(config), yes=yes, confirm=lambda q: click.confirm(q, default=False, err=True),
                          progress=lambda line: click.echo(line, err=True), wait_lock=wait_lock)
    click.echo(f"destroyed {len(names)} host(s){': ' + ', '.join(names) if names else ''}")


@fleet.command("drain")
@config_option
@click.argument("shard")
@wait_lock_option
@handle_errors
def fleet_drain(config: Path | None, shard: str, wait_lock: int) -> None:
    """Stop sending new rooms to SHARD (live rooms stay)."""
    from ensemble.lifecycle import drain_shard

    host = drain_shard(get_spec(config), shard, True, wait_lock=wait_lock)
    click.echo(f"{host.name}: drained (no new rooms after the front door's next refresh; live rooms stay)")


@fleet.command("undrain")
@config_option
@click.argument("shard")
@wait_lock_option
@handle_errors
def fleet_undrain(config: Path | None, shard: str, wait_lock: int) -> None:
    """Let SHARD take new rooms again."""
    from ensemble.lifecycle import drain_shard

    host = drain_shard(get_spec(config), shard, False, wait_lock=wait_lock)
    click.echo(f"{host.name}: undrained (takes new rooms after the front door's next refresh)")


# ---------------------------------------------------------------- front door

@main.group()
def frontdoor() -> None:
    """The front door: routing maps and their refresh."""


@frontdoor.command("refresh")
@config_option
@click.option("--secrets", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Secrets file holding fleet.occupancy_token. Default: /etc/ensemble/secrets.json.")
@click.option("--shards", type=click.IntRange(1, MAX_SHARDS), default=None,
              help="The fleet's shard count when `fleet scale` changed it (default: the spec's).")
@json_option
@handle_errors
def frontdoor_refresh(config: Path | None, secrets: Path | None, shards: int | None, as_json: bool) -> None:
    """Read every shard's occupancy, rewrite the routing maps, reload nginx if they changed."""
    from ensemble.frontdoor.commands import run_refresh

    spec = get_spec(config)
    result = run_refresh(spec.with_shards(shards) if shards else spec, secrets)
    if as_json:
        print_json(result.to_json())
    else:
        states = ", ".join(f"{d.name}={d.state}" for d in result.plan.shards)
        click.echo(f"{len(result.plan.pins)} pinned room(s); {states}; "
                   f"{'maps changed, nginx reloaded' if result.reloaded else 'no change'} ({result.seconds:.2f}s)")


# ---------------------------------------------------------------- status / smoke / inventory / janitor

@main.command()
@config_option
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The front door's state file. Default: the local one on a front door, else read over SSH.")
@click.option("--watch", is_flag=True, help="Redraw the table every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.IntRange(1, 3600), default=5, show_default=True,
              help="Seconds between redraws with --watch.")
@json_option
@handle_errors
def status(config: Path | None, state_path: Path | None, watch: bool, interval: int, as_json: bool) -> None:
    """Shards' state, occupancy, weights and pinned rooms."""
    from ensemble.frontdoor.status import format_status, load_status_state, status_document, status_rows

    if watch and as_json:
        raise UsageError("--watch: a terminal table; use --json without --watch (or poll it)")
    spec = get_spec(config)
    while True:
        state = load_status_state(spec, state_path)
        if as_json:
            print_json(status_document(state))
            return
        table = format_status(status_rows(state), state.get("refreshed_at"))
        if not watch:
            click.echo(table)
            return
        click.clear()
        click.echo(f"{spec.fleet.name}: every {interval}s, Ctrl-C to stop\n{table}")
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


@main.command()
@config_option
@click.option("--once", is_flag=True, help="One decision and its action, then exit (cron, CI).")
@click.option("--dry-run", is_flag=True, help="Decide and log, change nothing.")
@click.option("--interval", type=click.IntRange(5, 86400), default=None,
              help="Seconds between decisions when long-running. Default: autoscale.interval.")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The last actions (cooldowns). Default: $XDG_STATE_HOME/ensemble/autoscale-<fleet>.json.")
@click.option("--install-unit", is_flag=True,
              help="Write a systemd service (one --once round with this spec, user and state file) and its timer "
                   "(every --interval s after the last round ended) into --unit-dir, then exit.")
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --install-unit writes. Default: /etc/systemd/system.")
@json_option
@handle_errors
def autoscale(config: Path | None, once: bool, dry_run: bool, interval: int | None, state_file: Path | None,
              install_unit: bool, unit_dir: Path | None, as_json: bool) -> None:
    """Keep the [autoscale] policy: up by create + deploy (or undrain), down by drain, removed once empty.

    Runs on an ops host with the cloud credentials, never on a shard (--install-unit writes its
    systemd service + timer). Every decision is printed with its reason and figures (one JSON object
    per line with --json). --once exits 1 when its action did not finish (e.g. a deploy failed, or
    someone joined a drained shard before its removal: nothing is cut).
    """
    from ensemble.autoscale import autoscale_forever, autoscale_once

    if unit_dir is not None and not install_unit:
        raise UsageError("--unit-dir: only with --install-unit")
    spec = get_spec(config, files=True)
    if install_unit:
        _install_autoscale_unit(spec, once or dry_run, interval, state_file, unit_dir, as_json)
        return

    def progress(line: str) -> None:
        click.echo(line, err=True)

    def report(result) -> None:
        if as_json:
            click.echo(json.dumps(result.as_dict(), sort_keys=True))
        else:
            line = result.decision.line() + (" (dry run)" if result.dry_run else "")
            click.echo(line + (f"; {result.done}" if result.done else ""))
            if result.error:
                click.echo(f"autoscale: not finished: {one_line(result.error)}", err=True)

    if once:
        result = autoscale_once(spec, dry_run=dry_run, state_path=state_file, progress=progress)
        report(result)
        sys.exit(1 if result.error else 0)
    autoscale_forever(spec, interval or spec.autoscale.interval, report, dry_run=dry_run, state_path=state_file,
                      progress=progress)


def _install_autoscale_unit(spec, with_round_flags: bool, interval: int | None, state_file: Path | None,
                            unit_dir: Path | None, as_json: bool) -> None:
    from ensemble import paths
    from ensemble.autoscale import autoscale_units, default_state_path, install_units, unit_name

    if with_round_flags:
        raise UsageError("--install-unit: not with --once or --dry-run (the unit runs --once itself)")
    source = Path(spec.source)
    if not source.is_file():
        raise UsageError("--install-unit: the spec must be a file (pass --config PATH)")
    units = autoscale_units(spec, source.resolve(), (state_file or default_state_path(spec)).resolve(),
                            interval or spec.autoscale.interval)
    folder = unit_dir or Path(paths.OPS_UNIT_DIR)
    changed = install_units(units, folder)
    enable = f"systemctl daemon-reload && systemctl enable --now {unit_name(spec)}.timer"
    if as_json:
        click.echo(json.dumps({"unit_dir": str(folder), "units": sorted(units), "changed": changed,
                               "enable": enable}, sort_keys=True))
        return
    for name in sorted(units):
        click.echo(f"{folder / name}: {'written' if name in changed else 'unchanged'}")
    click.echo(f"start it: {enable}")
    click.echo(f"cloud credentials for it (optional, 0600): {paths.OPS_AUTOSCALE_ENV.format(fleet=spec.fleet.name)}")


@main.command()
@config_option
@click.option("--keep", is_flag=True, help="Keep the throwaway shard for debugging.")
@json_option
@handle_errors
def smoke(config: Path | None, keep: bool, as_json: bool) -> None:
    """Create one throwaway shard, deploy it, check it, destroy it (pass/fail exit code)."""
    from ensemble.lifecycle import smoke as run_smoke

    result = run_smoke(get_spec(config, files=True), keep=keep, progress=lambda line: click.echo(line, err=True))
    if as_json:
        print_json(result.as_dict())
    else:
        verdict = "PASS" if result.ok else "FAIL: " + "; ".join(result.failures)
        click.echo(f"smoke {result.fleet}: {verdict}")
    sys.exit(0 if result.ok else 1)


@main.command()
@config_option
@json_option
@handle_errors
def inventory(config: Path | None, as_json: bool) -> None:
    """The fleet's hosts with their SSH data (pyinfra inventory)."""
    from ensemble.lifecycle import inventory_of

    data = inventory_of(get_spec(config))
    if as_json:
        print_json(data)
    else:
        for name, host in data["hosts"].items():
            click.echo(f"{name}  {host['ensemble_role']}  {host['ssh_user']}@{host['ssh_hostname']}:{host['ssh_port']}")


@main.command()
@config_option
@click.option("--older-than", default="2h", show_default=True, help="Age of leaked smoke resources.")
@click.option("--tag", "tags", multiple=True, help="Only resources with this tag too.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def janitor(config: Path | None, older_than: str, tags: tuple[str, ...], yes: bool) -> None:
    """Delete throwaway (smoke) resources that leaked, and nothing else."""
    from ensemble.lifecycle import janitor as run_janitor

    spec = get_spec(config)
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    found, asked_at = None, None
    if not yes:  # the question lists exactly what the answer deletes (and no more, whatever changes meanwhile)
        asked_at = time.time()
        found = run_janitor(spec, older_than, tags, dry_run=True, progress=say)
        if not found:
            click.echo("janitor: nothing to delete")
            return
        if not click.confirm(f"Delete {len(found)} leaked smoke resource(s): {', '.join(found)}?", err=True):
            raise click.exceptions.Abort()
    removed = run_janitor(spec, older_than, tags, progress=say, confirmed=found, asked_at=asked_at)
    click.echo(f"janitor: deleted {len(removed)} resource(s){': ' + ', '.join(removed) if removed else ''}")


if __name__ == "__main__":
    main()
