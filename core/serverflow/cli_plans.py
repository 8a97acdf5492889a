"""`serverflow plans ...`: review what an assistant proposed, then confirm or reject it.

Remote commands, through the REST API like the others in cli.py (SERVERFLOW_URL,
SERVERFLOW_TOKEN); attached to the main group at the end of cli.py.
"""

from __future__ import annotations

import json
from typing import Any

import click

from serverflow.cli_remote import api_client, remote


def _show(plan: dict[str, Any]) -> None:
    click.echo(f"plan {plan['id']}  [{plan['status']}]  {plan['kind']}")
    click.echo(f"  {plan['summary']}")
    click.echo(f"  proposed by {plan['created_by']} at {plan['created_at']}")
    if plan["status"] == "pending":
        click.echo(f"  expires at {plan['expires_at']}")
    if plan["decided_by"]:
        click.echo(f"  decided by {plan['decided_by']} at {plan['decided_at']}")
    click.echo("  preview:")
    for line in json.dumps(plan["preview"], indent=2).splitlines():
        click.echo(f"    {line}")
    if plan["result"] is not None:
        click.echo("  result:")
        for line in json.dumps(plan["result"], indent=2).splitlines():
            click.echo(f"    {line}")


@click.group()
def plans() -> None:
    """Plans proposed by assistants over MCP (dry runs waiting for a decision)."""


@plans.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "confirmed", "applied", "failed", "rejected", "expired"]),
    default=None,
)
@click.option("--json", "as_json", is_flag=True)
@remote
def plans_list(status: str | None, as_json: bool, url: str | None, token: str | None) -> None:
    """Plans, newest first."""
    query = f"?status={status}" if status else ""
    rows = api_client(url, token).request("GET", f"/plans{query}")["plans"]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no plans")
    for row in rows:
        click.echo(
            f"{row['id']}  {row['status']:<9} {row['kind']:<11} {row['created_at'][:19]}  "
            f"{row['summary']}"
        )


@plans.command("show")
@click.argument("plan_id")
@click.option("--json", "as_json", is_flag=True)
@remote
def plans_show(plan_id: str, as_json: bool, url: str | None, token: str | None) -> None:
    """What a plan does, who proposed it, and how it ended."""
    plan = api_client(url, token).request("GET", f"/plans/{plan_id}")
    if as_json:
        click.echo(json.dumps(plan))
    else:
        _show(plan)


@plans.command("confirm")
@click.argument("plan_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; confirm at once.")
@click.option("--json", "as_json", is_flag=True)
@remote
def plans_confirm(
    plan_id: str, yes: bool, as_json: bool, url: str | None, token: str | None
) -> None:
    """Confirm a plan: it runs now (once). Shows it first and asks, unless --yes."""
    client = api_client(url, token)
    if not yes:
        plan = client.request("GET", f"/plans/{plan_id}")
        _show(plan)
        click.confirm(f"Run this {plan['kind']} plan now?", abort=True)
    done = client.request("POST", f"/plans/{plan_id}/confirm")
    if as_json:
        click.echo(json.dumps(done))
    else:
        click.echo(f"plan {done['id']} {done['status']}: {done['summary']}")
    if done["status"] != "applied":
        error = (done.get("result") or {}).get("error") or {}
        raise click.ClickException(
            f"[{error.get('code', 'MCP002')}] the plan {done['status']}: "
            f"{error.get('message') or json.dumps(done.get('result'))}"
        )


@plans.command("reject")
@click.argument("plan_id")
@click.option("--json", "as_json", is_flag=True)
@remote
def plans_reject(plan_id: str, as_json: bool, url: str | None, token: str | None) -> None:
    """Reject a plan: it will never run."""
    done = api_client(url, token).request("POST", f"/plans/{plan_id}/reject")
    click.echo(json.dumps(done) if as_json else f"plan {done['id']} rejected: {done['summary']}")
