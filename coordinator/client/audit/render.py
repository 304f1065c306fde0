"""An audit's report for people: a summary table, then each note and discrepancy."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from coordinator.client.audit.reports import AuditReport, ReceiptReport
from shared.money import format_money

# more than this many discrepancies are counted, not listed (`--json` lists them all)
_MAX_LISTED = 200


def render_report(report: AuditReport | ReceiptReport, console: Console) -> None:
    """The report for people: a summary table, then each discrepancy and note."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    if isinstance(report, AuditReport):
        rows: list[tuple[str, str]] = [
            ("log", report.origin),
            ("log key", report.log_key),
            ("key trusted as", report.key_trust),
            ("checkpoint", f"{report.size} entries, root {report.root_hash[:16]}…"),
            ("entries", str(sum(report.entries_by_kind.values()))),
            ("receipts", str(report.receipts)),
            ("acknowledgements checked", str(report.acknowledgements)),
            ("leases", str(report.leases)),
            ("agents", str(report.agents)),
            ("enterprises", str(report.enterprises)),
            ("auctions replayed", str(report.auctions_replayed)),
            (
                "ledger balances compared",
                "no auditor token given"
                if report.balances_compared is None
                else str(report.balances_compared),
            ),
            ("total charged", format_money(report.charged)),
            ("  voucher part", format_money(report.voucher)),
            ("  deferred part", format_money(report.deferred)),
        ]
        if report.previous_size is not None:
            rows.insert(3, ("previous checkpoint", f"{report.previous_size} entries"))
    else:
        rows = [
            ("receipt", report.digest),
            ("log entry", "—" if report.index is None else f"{report.index} of {report.size}"),
            ("lease", f"{report.lease_id} seq {report.seq}"),
            ("agent", report.agent_id),
            ("cumulative amount", format_money(report.amount)),
            ("charged by it", format_money(report.charged)),
        ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    listed = report.discrepancies[:_MAX_LISTED]
    for item in listed:
        console.print(f"[red]✗[/red] {item.code}: {item.line()}", highlight=False)
    if len(report.discrepancies) > len(listed):
        console.print(
            f"… and {len(report.discrepancies) - len(listed)} more discrepancies "
            "(--json lists them all)"
        )
    if report.ok:
        console.print("[green]✓ verified[/green]")
    else:
        console.print(f"[red]{len(report.discrepancies)} discrepancies[/red]")
