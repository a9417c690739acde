"""`vmworker hooks`: list the installed chains, and dry-run one on a copy of a payload."""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

import click
import structlog
from lxml import etree

from worker import config
from worker.config import REPO_HOOKDIRS as REPO_HOOKDIRS
from worker.hooks.custom import CustomPropertyError
from worker.hooks.engine import HookEngine, ScriptResult
from worker.hooks.points import POINTS, get_point
from worker.hooks.scripts import HookRootError, check_dir, check_root, point_dirs, skipped

NIL_UUID = "00000000-0000-0000-0000-000000000000"


def default_hooks_root() -> Path:
    """$VMWORKER_HOOKS_ROOT, else the worker's default (worker.config.default_hooks_root)."""
    env = os.environ.get("VMWORKER_HOOKS_ROOT")
    if env:
        return Path(env)
    return config.default_hooks_root()


class BadHooksRoot(click.ClickException):
    """A hooks root that cannot be used: one line, exit status 2."""

    exit_code = 2


def hooks_root_or_exit(root: Path) -> Path:
    """`root` made absolute, or exit 2 naming it and what is wrong with it."""
    try:
        return check_root(root)
    except HookRootError as exc:
        raise BadHooksRoot(str(exc)) from None


hooks_dir_option = click.option(
    "--hooks",
    "hooks_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="hooks root [default: $VMWORKER_HOOKS_ROOT, /etc/vmworker/hooks, the repo's hookdirs/]",
)


@click.group("hooks")
def hooks() -> None:
    """Inspect and dry-run hook chains."""
    if not structlog.is_configured():
        # standalone use: keep the report on stdout clean, warnings go to stderr
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        )


@hooks.command("list")
@hooks_dir_option
@click.option("--json", "as_json", is_flag=True, help="print the inventory as JSON")
@click.option("--no-inproc", is_flag=True, help="leave out in-process (entry-point) hooks")
def list_hooks(hooks_root: Path | None, as_json: bool, no_inproc: bool) -> None:
    """Every hook point that has hooks, its hooks in run order with sha256."""
    root = hooks_root_or_exit(hooks_root or default_hooks_root())
    engine = HookEngine(root, inproc=not no_inproc)
    inventory = engine.inventory()
    if as_json:
        click.echo(json.dumps(inventory, indent=2, sort_keys=True))
        return
    click.echo(f"hooks root: {root}")
    root_problem = check_dir(root, "hooks root")
    if root_problem:
        click.secho(f"  REFUSED: {root_problem}", fg="red")
    not_run = {p: found for p in POINTS if (found := skipped(root, p))}
    if not inventory and not not_run:
        click.echo("  (no hooks)")
    for point in POINTS:
        if point not in inventory and point not in not_run:
            continue
        click.secho(f"{point}", bold=True)
        for e in inventory.get(point, ()):
            digest = (e["sha256"] or "-" * 64)[:16]
            tag = "" if e["kind"] == "script" else " [in-process]"
            line = f"  {e['name']:<32} {digest}{tag}"
            if e["refused"]:
                click.secho(f"{line}  REFUSED: {e['refused']}", fg="red")
            else:
                click.echo(line)
        for name, why in not_run.get(point, ()):
            click.secho(f"  {name:<32} {'-' * 16}  skipped: {why}", fg="yellow")
    unknown = [d for d in point_dirs(root) if d not in POINTS]
    if unknown:
        click.echo(f"not run by vmworker (unknown hook points): {', '.join(unknown)}")


def _parse_custom(pairs: tuple[str, ...]) -> dict[str, str]:
    custom: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not k=v", param_hint="--custom")
        custom[key] = value
    return custom


def _vm_id_from(xml: str) -> str:
    try:
        uuid = etree.fromstring(xml.encode("utf-8")).findtext("uuid")
    except etree.XMLSyntaxError:
        return NIL_UUID
    return (uuid or NIL_UUID).strip()


def _outcome(s: ScriptResult) -> tuple[str, str]:
    if s.refused:
        return "REFUSED", "red"
    if s.timed_out:
        return "TIMEOUT", "red"
    if s.rc == 0:
        return "ok", "green"
    if s.rc == 2:
        return "rc=2 (stop)", "red"
    if s.rc == 1:
        return "rc=1", "red"
    return f"rc={s.rc} (unexpected, as 1)", "red"


def _pretty(text: str, is_xml: bool) -> str:
    """The payload laid out one element (or JSON member) per line, for a readable diff."""
    try:
        if is_xml:
            parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False)
            tree = etree.fromstring(text.encode("utf-8"), parser)
            return etree.tostring(tree, encoding="unicode", pretty_print=True)
        return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    except (etree.XMLSyntaxError, ValueError):
        return text


def _indent(text: str) -> str:
    return "".join(f"      | {line}\n" for line in text.rstrip("\n").splitlines())


@hooks.command("run")
@click.argument("point")
@click.option("--xml", "xml_file", type=click.File("r"), help="domain or device XML to feed")
@click.option("--json", "json_file", type=click.File("r"), help="JSON to feed (JSON points)")
@click.option("--custom", "custom_pairs", multiple=True, metavar="K=V", help="custom property")
@click.option("--vm-id", default=None, help="vmId [default: the XML's <uuid>]")
@click.option("--error", default=None, help="_hook_error, for after_*_fail chains")
@click.option("-o", "--output", type=click.File("w"), help="also write the final payload here")
@hooks_dir_option
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds per script")
@click.option("--no-inproc", is_flag=True, help="leave out in-process (entry-point) hooks")
@click.option("--raw-diff", is_flag=True, help="diff the exact text, not a pretty-printed form")
@click.option("--prewarm", is_flag=True, help="run python3 scripts in the pre-warmed runner")
def run_hooks(
    point: str,
    xml_file: IO[str] | None,
    json_file: IO[str] | None,
    custom_pairs: tuple[str, ...],
    vm_id: str | None,
    error: str | None,
    output: IO[str] | None,
    hooks_root: Path | None,
    timeout: float,
    no_inproc: bool,
    raw_diff: bool,
    prewarm: bool,
) -> None:
    """Dry-run the chain of POINT on a copy of the payload: each hook's outcome, then the diff.

    Exit status 1 when the chain failed (a before_* chain would abort the operation).
    """
    try:
        hp = get_point(point)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="POINT") from None
    source = json_file if not hp.is_xml else xml_file
    if source is None:
        need = "--json" if not hp.is_xml else "--xml"
        raise click.UsageError(f"{point} takes a {hp.payload} payload: give {need} FILE")
    payload = source.read()
    custom = _parse_custom(custom_pairs)
    root = hooks_root_or_exit(hooks_root or default_hooks_root())
    # what the scripts keep per VM (launch flags) goes to a scratch directory, like the payload
    state = tempfile.TemporaryDirectory(prefix="vmworker-hooks-run-")
    engine = HookEngine(
        root, timeout=timeout, inproc=not no_inproc, prewarm=prewarm, state_dir=Path(state.name)
    )
    try:
        res = engine.run_chain(
            point,
            payload,
            vm_id=vm_id if vm_id is not None else _vm_id_from(payload) if hp.is_xml else NIL_UUID,
            custom=custom,
            error=error,
            context={"op": "dry-run"},
        )
    except CustomPropertyError as exc:
        raise click.BadParameter(str(exc), param_hint="--custom") from None
    finally:
        engine.close()
        state.cleanup()

    click.secho(f"{point} ({hp.payload}) in {root}", bold=True)
    if not res.scripts:
        click.echo("  (no hooks)")
    for s in res.scripts:
        word, color = _outcome(s)
        notes = []
        if s.changed_xml:
            notes.append("changed payload")
        if s.discarded:
            notes.append(f"edit discarded: {s.discarded}")
        extra = f"  [{'; '.join(notes)}]" if notes else ""
        kind = " (in-process)" if s.kind == "inproc" else ""
        click.echo(f"  {s.name}{kind}: ", nl=False)
        click.secho(word, fg=color, nl=False)
        click.echo(f"  {s.duration_ms} ms{extra}")
        if s.refused:
            click.echo(_indent(s.refused), nl=False)
            continue
        if s.stdout_tail.strip():
            click.echo("    stdout:")
            click.echo(_indent(s.stdout_tail), nl=False)
        if s.stderr_tail.strip():
            click.echo("    stderr:")
            click.echo(_indent(s.stderr_tail), nl=False)

    before, after = res.input_payload, res.payload
    if not raw_diff and before != after:
        before, after = _pretty(before, hp.is_xml), _pretty(after, hp.is_xml)
    diff = list(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"{point}.in",
            tofile=f"{point}.out",
        )
    )
    if diff:
        click.secho("payload diff:", bold=True)
        for line in diff:
            line = line if line.endswith("\n") else line + "\n"
            fg = "green" if line.startswith("+") else "red" if line.startswith("-") else None
            click.secho(line, fg=fg, nl=False)
    else:
        click.echo("payload unchanged")
    if output is not None:
        output.write(res.payload)
    if res.failed:
        verdict = "stopped" if res.stopped else "failed"
        abort = " (the operation would be aborted)" if hp.aborts else ""
        click.secho(f"chain {verdict}{abort}", fg="red", bold=True)
        raise SystemExit(1)
    click.secho("chain ok", fg="green", bold=True)
