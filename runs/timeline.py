"""A thread's checkpoints as timeline rows, with the branch graph drawn in SVG.

Rows come newest first, as the savers page them. Each checkpoint sits in a
lane; a lane waits for the checkpoint its last row named as parent. A
checkpoint nobody waits for starts a new lane (the tip of a line the thread
later left), and a checkpoint several lanes wait for is where they branched
off. The lanes still waiting at the end of a page travel with the "older"
link, so the next page continues the drawing.

Each row draws its own small SVG: lines from the top edge into the node or
straight through, the node, and the line leaving it towards its parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from agentmatic.checkpoint.base import BaseSaver
from agentmatic.state import State

LANE_WIDTH = 16
ROW_HEIGHT = 44
MARGIN = 10
RADIUS = 5
OVERLAP = 3
# Lanes beyond this many are drawn in the last one (a thread rarely has so
# many lines open at one point; the labels still name each branch).
MAX_LANES = 8


@dataclass
class Fork:
    """A thread started from a checkpoint of this one."""

    thread_id: str
    label: str


@dataclass
class Row:
    """One checkpoint of the timeline."""

    state: State
    node: str
    lane: int
    # Why this row starts or leaves a line, in words; empty on a plain row.
    labels: list[str] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)
    forked_from: dict[str, str] | None = None
    # The drawing: lanes holding a line above and below the node, and the
    # lanes that end in it; drawn only for the rows a page shows.
    above: list[bool] = field(default_factory=list)
    below: list[bool] = field(default_factory=list)
    joining: list[int] = field(default_factory=list)
    upside_down: bool = False

    @property
    def checkpoint_id(self) -> str:
        return self.state.checkpoint_id

    @property
    def actor(self) -> str:
        return str(self.state.metadata.get("actor") or "")

    @property
    def svg(self) -> SafeString:
        return _draw(self)


def node_of(state: State, parent: State | None) -> str:
    """Return the node (or nodes) whose work this checkpoint records."""
    source = state.source
    writes = state.metadata.get("writes")
    if isinstance(writes, dict) and writes:
        names = [n for n in writes if n != "__start__"]
        return ", ".join(names) if names else "start"
    if source == "input":
        return "input"
    if source == "fork":
        return "fork"
    if source == "update":
        return "update"
    if parent is not None and parent.next:
        return ", ".join(n for n in parent.next if n != "__start__") or "start"
    return ""


def encode_lanes(lanes: Sequence[str | None]) -> str:
    return ",".join(lane or "" for lane in lanes)


def decode_lanes(raw: str) -> list[str | None]:
    if not raw:
        return []
    lanes: list[str | None] = [part or None for part in raw.split(",")[:MAX_LANES]]
    return lanes


def layout(
    states: Sequence[State],
    *,
    lanes: Sequence[str | None] = (),
    parent_of_last: State | None = None,
    forks: dict[str, list[Fork]] | None = None,
    continued: bool = False,
) -> tuple[list[Row], list[str | None]]:
    """Return the rows of `states` (newest first) and the lanes left open.

    `lanes` are the lanes the rows above the page left open (`continued`:
    there are such rows); `parent_of_last` is the checkpoint just below the
    page (to name the last row's node); `forks` lists, by checkpoint id, the
    threads forked from it.
    """
    open_lanes: list[str | None] = list(lanes)
    rows: list[Row] = []
    below = [*states[1:], parent_of_last]
    for state, older in zip(states, below, strict=True):
        parent_id = state.parent_checkpoint_id
        parent = older if older and older.checkpoint_id == parent_id else None
        above = list(open_lanes)
        lane, joining, new_line = _place(open_lanes, state.checkpoint_id, parent_id)
        labels: list[str] = []
        if new_line and (rows or lanes or continued):
            labels.append("an earlier line ends here")
        if joining:
            labels.append(f"branch point: {len(joining) + 1} lines")
        if parent_id and older is not None and parent is None:
            labels.append(_branch_label(state))
        forked_from = state.metadata.get("forked_from")
        if isinstance(forked_from, dict) and not parent_id:
            labels.append("forked from another thread")
        rows.append(
            Row(
                state=state,
                node=node_of(state, parent),
                lane=min(lane, MAX_LANES - 1),
                labels=labels,
                forks=(forks or {}).get(state.checkpoint_id, []),
                forked_from=forked_from if isinstance(forked_from, dict) else None,
                above=[cid is not None for cid in above],
                below=[cid is not None for cid in open_lanes],
                joining=joining,
            )
        )
        _trim(open_lanes)
    return rows, open_lanes


def _place(
    open_lanes: list[str | None], checkpoint_id: str, parent_id: str | None
) -> tuple[int, list[int], bool]:
    """Put a checkpoint in a lane; return it, the lanes joining it, and whether
    it starts a new line. `open_lanes` then waits for its parent there."""
    waiting = [i for i, cid in enumerate(open_lanes) if cid == checkpoint_id]
    if waiting:
        lane, joining = waiting[0], waiting[1:]
    else:
        lane, joining = _free_lane(open_lanes), []
    while len(open_lanes) <= lane:
        open_lanes.append(None)
    open_lanes[lane] = parent_id
    for i in joining:
        open_lanes[i] = None
    return lane, joining, not waiting


def lanes_after(links: Sequence[tuple[str, str | None]]) -> list[str | None]:
    """Return the lanes left open below these `(id, parent)` rows, newest first."""
    open_lanes: list[str | None] = []
    for checkpoint_id, parent_id in links:
        _place(open_lanes, checkpoint_id, parent_id)
        _trim(open_lanes)
    return open_lanes


def _branch_label(state: State) -> str:
    meta = state.metadata
    if meta.get("replay_of"):
        return "new line: replay"
    if state.source == "input":
        return "new line: new input"
    if state.source == "update":
        return "new line: state edited"
    return "new line"


def _free_lane(lanes: list[str | None]) -> int:
    for i, cid in enumerate(lanes):
        if cid is None:
            return i
    return len(lanes)


def _trim(lanes: list[str | None]) -> None:
    while lanes and lanes[-1] is None:
        lanes.pop()


def _x(lane: int) -> int:
    return MARGIN + min(lane, MAX_LANES - 1) * LANE_WIDTH


def _draw(row: Row) -> SafeString:
    """Return the row's SVG: lines in from above, the node, lines out below."""
    mid = ROW_HEIGHT // 2
    lane = row.lane
    # Lines run a little past the row's edges (the SVG does not clip), so
    # they join across the table's row borders.
    top, bottom = -OVERLAP, ROW_HEIGHT + OVERLAP
    parts: list[str] = []
    for i, active in enumerate(row.above):
        if not active:
            continue
        if i == lane or i in row.joining:
            parts.append(_line(_x(i), top, _x(lane), mid, "lane"))
        else:
            parts.append(_line(_x(i), top, _x(i), bottom, "lane"))
    if lane < len(row.below) and row.below[lane]:
        parts.append(_line(_x(lane), mid, _x(lane), bottom, "lane"))
    width = _x(max(len(row.above), len(row.below), lane + 1)) + MARGIN
    if row.forks:
        # A stub to the right: threads forked from this checkpoint.
        parts.append(_line(_x(lane), mid, width + 6, mid, "fork"))
        width += 12
    if row.forked_from:
        parts.append(_line(_x(lane), bottom, _x(lane), mid, "fork"))
    parts.append(
        format_html(
            '<circle class="node node-{}" cx="{}" cy="{}" r="{}"/>',
            row.state.source or "other",
            _x(lane),
            mid,
            RADIUS,
        )
    )
    body = mark_safe("".join(parts))  # noqa: S308 - built from format_html pieces
    # Oldest first, the same drawing is turned upside down.
    turn = (
        format_html(' transform="translate(0 {}) scale(1 -1)"', ROW_HEIGHT)
        if row.upside_down
        else ""
    )
    return format_html(
        '<svg class="graph" width="{}" height="{}" viewBox="0 0 {} {}" '
        'aria-hidden="true" focusable="false"><g class="graph-body"{}>{}</g></svg>',
        width,
        ROW_HEIGHT,
        width,
        ROW_HEIGHT,
        turn,
        body,
    )


def _line(x1: int, y1: int, x2: int, y2: int, kind: str) -> str:
    if x1 == x2 or y1 == y2:
        return str(
            format_html(
                '<line class="{}" x1="{}" y1="{}" x2="{}" y2="{}"/>',
                kind,
                x1,
                y1,
                x2,
                y2,
            )
        )
    # A bend: down from the top edge, then across into the node.
    return str(
        format_html(
            '<path class="{}" d="M{} {} C{} {} {} {} {} {}"/>',
            kind,
            x1,
            y1,
            x1,
            (y1 + y2) // 2,
            x2,
            (y1 + y2) // 2,
            x2,
            y2,
        )
    )


def flip(rows: list[Row]) -> list[Row]:
    """Return the rows oldest first, each drawing turned upside down."""
    return [replace(row, upside_down=True) for row in reversed(rows)]


# -- pages of a thread's timeline ------------------------------------------------

PAGE_SIZE = 50
ORDERS = ("newest", "oldest")


@dataclass
class Timeline:
    """One page of rows, and how to ask for the next one."""

    rows: list[Row]
    order: str
    # Newest first: the checkpoint to read before, and the lanes left open.
    before: str | None = None
    lanes: str = ""
    # Oldest first: where the next page starts.
    offset: int | None = None
    total: int | None = None


def load_timeline(
    saver: BaseSaver,
    thread_id: str,
    *,
    order: str = "newest",
    before: str | None = None,
    lanes: str = "",
    offset: int = 0,
    forks: dict[str, list[Fork]] | None = None,
    size: int = PAGE_SIZE,
) -> Timeline:
    """Return a page of the thread's timeline, read without values."""
    if order == "oldest":
        return _oldest_first(saver, thread_id, offset, forks, size)
    # One more than shown, to name the node of the page's last row.
    states = saver.get_state_history(
        thread_id, limit=size + 1, before=before or None, values=False
    )
    shown, extra = states[:size], (states[size] if len(states) > size else None)
    rows, still_open = layout(
        shown, lanes=decode_lanes(lanes), parent_of_last=extra, forks=forks
    )
    return Timeline(
        rows=rows,
        order="newest",
        before=shown[-1].checkpoint_id if shown and extra is not None else None,
        lanes=encode_lanes(still_open),
    )


def _oldest_first(
    saver: BaseSaver,
    thread_id: str,
    offset: int,
    forks: dict[str, list[Fork]] | None,
    size: int,
) -> Timeline:
    # The page is a stretch of the newest-first history: the lanes the rows
    # above it leave open come from the thread's shape alone (ids and
    # parents), and only the page's own states are read.
    links = saver.history_links(thread_id)
    offset = max(0, offset)
    end = max(0, len(links) - offset)
    start = max(0, end - size)
    before = links[start - 1][0] if start else None
    # One more than shown, to name the node of the page's last row.
    states = saver.get_state_history(
        thread_id, limit=end - start + 1, before=before, values=False
    )
    shown = states[: end - start]
    extra = states[end - start] if len(states) > end - start else None
    rows, _ = layout(
        shown,
        lanes=lanes_after(links[:start]),
        parent_of_last=extra,
        forks=forks,
        continued=start > 0,
    )
    more = offset + size < len(links)
    return Timeline(
        rows=flip(rows),
        order="oldest",
        offset=offset + size if more else None,
        total=len(links),
    )
