"""The ``authpool top`` screen: per provider a summary line, then every account as a table row.

Live: every ``poll`` seconds (0.5 by default) the store is read (a cached read unless another
process changed it) and the event log's new lines are counted (an :class:`ActivityFeed` thread),
so a change made anywhere shows within a second. The table keeps its rows and changes only the
cells that changed; it is a Textual ``DataTable``, which draws only the visible rows. A pool larger
than 200 accounts is listed in part (those that need a person first, then cooling, ready,
disabled; ``/`` narrows it): at 10,000 accounts a refresh would otherwise build 10,000 views and
rows twice a second. Every cell is plain text (``rich.text.Text``), never
markup: a label or a provider's error message in brackets is shown as it is. Keys act on the
selected account through the library, each in a worker thread (a change waits for the pool's
lock, never the screen).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static

from authpool import Pool, PoolError
from authpool.accounts import SHOWN_LIMIT, account_view, pool_status, shown_accounts
from authpool.events import ActivityFeed
from authpool.server.top.rows import COLUMNS, account_cells, provider_line

__all__ = ["TopApp"]


class TopApp(App[None]):
    """The pool, live."""

    TITLE = "authpool top"
    CSS = """
    #summary { height: auto; max-height: 6; padding: 0 1; background: $boost; }
    #filter { display: none; height: 3; }
    #filter.shown { display: block; }
    #message { height: 1; padding: 0 1; color: $text-muted; }
    DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "enable", "enable"),
        Binding("d", "disable", "disable"),
        Binding("r", "reset", "reset"),
        Binding("slash", "filter", "filter", key_display="/"),
        Binding("escape", "clear_filter", "clear filter", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, pool: Pool, *, poll: float = 0.5, clock: Callable[[], float] = time.time,
                 limit: int = SHOWN_LIMIT) -> None:
        super().__init__()
        self.pool = pool
        self.poll = poll
        self.limit = limit  # rows listed at once: a large pool is listed in part, attention first
        self.clock = clock
        self.feed = ActivityFeed(pool.home.events_file, poll=min(poll, 0.25), clock=clock)
        self.filter_text = ""
        self._order: list[str] = []  # account ids, in table order
        self._cells: dict[str, tuple[str, ...]] = {}
        self.refreshes = 0  # how many times the view was redrawn (tests wait on it)

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        yield Input(placeholder="filter: part of a name, provider or state (Enter keeps it, Esc clears)", id="filter")
        yield DataTable(id="accounts", cursor_type="row", zebra_stripes=True)
        yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for title, width in COLUMNS:
            table.add_column(title, width=width, key=title)
        self.feed.start()
        self.refresh_view()
        self.set_interval(self.poll, self.refresh_view)
        table.focus()

    def on_unmount(self) -> None:
        self.feed.stop()

    # -- drawing ---------------------------------------------------------------------------

    def refresh_view(self) -> None:
        """Read the pool and the activity; redraw what changed."""
        now = self.clock()
        try:
            accounts = self.pool.accounts()
        except PoolError as e:
            self.query_one("#message", Static).update(Text(f"cannot read the pool: {e}"))
            return
        status = pool_status(accounts, now)
        lines = [provider_line(p, now) for p in status["providers"]] or [
            f"no accounts yet in {self.pool.home.path}: add one with `authpool accounts add-key PROVIDER --label NAME`"]
        shown, matching = shown_accounts(accounts, now, needle=self.filter_text, limit=self.limit)
        if len(shown) < matching:
            matched = f" matching {self.filter_text!r}" if self.filter_text else ""
            lines.append(f"listing {len(shown)} of {matching} accounts{matched}: those that need attention first, "
                         "then cooling, ready, disabled (/ narrows the list)")
        self.query_one("#summary", Static).update(Text("\n".join(lines)))
        views = [account_view(a, now) for a in shown]
        self._draw([(v["id"], account_cells(v, self.feed.activity, now)) for v in views])
        self.refreshes += 1

    def _draw(self, rows: list[tuple[str, tuple[str, ...]]]) -> None:
        table = self.query_one(DataTable)
        order = [account_id for account_id, _ in rows]
        if order != self._order:  # accounts added, removed, reordered or filtered: rebuild
            selected = self.selected_id()
            table.clear()
            for account_id, cells in rows:
                table.add_row(*map(Text, cells), key=account_id)
            self._order, self._cells = order, dict(rows)
            if selected in order:
                table.move_cursor(row=order.index(selected))
            return
        for account_id, cells in rows:
            before = self._cells.get(account_id)
            if before == cells:
                continue
            for (title, _), old, new in zip(COLUMNS, before or ("",) * len(cells), cells, strict=True):
                if old != new:
                    table.update_cell(account_id, title, Text(new))
            self._cells[account_id] = cells

    def selected_id(self) -> str | None:
        """The id of the account under the cursor, if any."""
        table = self.query_one(DataTable)
        if not self._order or table.cursor_row < 0 or table.cursor_row >= len(self._order):
            return None
        return self._order[table.cursor_row]

    def screen_text(self) -> str:
        """The screen as plain text, line by line (for tests and snapshots)."""
        return "\n".join(strip.text.rstrip() for strip in self.screen._compositor.render_strips())

    # -- keys ------------------------------------------------------------------------------

    def action_enable(self) -> None:
        self._act("enabled", lambda account_id: self.pool.set_enabled(account_id, True))

    def action_disable(self) -> None:
        self._act("disabled", lambda account_id: self.pool.set_enabled(account_id, False))

    def action_reset(self) -> None:
        self._act("reset", self.pool.reset)

    def _act(self, done: str, change: Callable[[str], Any]) -> None:
        account_id = self.selected_id()
        if account_id is None:
            return

        def work() -> None:
            try:
                acc = change(account_id)
                text = f"{done} {acc.name}"
            except PoolError as e:
                text = f"error: {e}"
            self.call_from_thread(self._after_action, text)

        self.run_worker(work, thread=True, exclusive=False)

    def _after_action(self, text: str) -> None:
        self.query_one("#message", Static).update(Text(text))
        self.refresh_view()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.refresh_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self.filter_text = ""
        self.query_one(DataTable).focus()
        self.refresh_view()
