"""The 1,000-superstep benchmark: `python -m bench` (or `make bench`).

Each workload appends one ~400-byte message per superstep: an agent whose
offline model keeps calling a no-op tool. For every saver it prints steps per
second, the median time of steps 101-200 and of steps 901-1,000 (a flat
runtime keeps their ratio near 1), and the time to load the whole history,
with values (median of 3 reads) and with metadata only (median of 5). With
LangGraph installed, the same workload runs on LangGraph's StateGraph
(default `add_messages` channel, `durability="sync"`) in the same process,
for comparison (its history, many seconds long, is read once).

Options: `--steps N`, `--only NAME[,NAME]`, `--postgres URL` (default from
AGENTMATIC_POSTGRES_URL; skipped when unset or unreachable).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAYLOAD_BYTES = 400


@dataclass
class Result:
    name: str
    steps: int
    seconds: float
    early_ms: float
    late_ms: float
    history_s: float | None
    meta_history_s: float | None
    note: str = ""

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.late_ms / self.early_ms if self.early_ms else 0.0


class StepClock:
    """Records when each checkpoint is written; step times are the gaps."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def mark(self) -> None:
        self.marks.append(time.perf_counter())

    def window(self, first: int, last: int) -> float:
        gaps = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        chosen = gaps[first - 1 : last]
        return statistics.median(chosen) * 1000 if chosen else 0.0


def median_time(read: Callable[[], Any], times: int) -> float:
    """Return the median time of `times` calls of `read`, in seconds."""
    spent = []
    for _ in range(times):
        t0 = time.perf_counter()
        read()
        spent.append(time.perf_counter() - t0)
    return statistics.median(spent)


def timed_saver(saver: Any, clock: StepClock) -> Any:
    """Mark the clock at each stored checkpoint, whichever method stores it."""
    put, put_step = saver.put, getattr(saver, "put_step", None)
    inside = {"step": False}

    def timed_put(*args: Any, **kwargs: Any) -> Any:
        out = put(*args, **kwargs)
        if not inside["step"]:
            clock.mark()
        return out

    def timed_put_step(*args: Any, **kwargs: Any) -> Any:
        inside["step"] = True
        try:
            out = put_step(*args, **kwargs)
        finally:
            inside["step"] = False
        clock.mark()
        return out

    saver.put = timed_put
    if hasattr(saver, "put_step"):
        saver.put_step = timed_put_step
    return saver


def run_agentmatic(name: str, saver: Any, steps: int) -> Result:
    from agentmatic import Agent, HumanMessage
    from agentmatic.llms import LoopModel

    def noop(payload: str) -> str:
        """Do nothing and say so, at the size of a real tool result."""
        return "ok:" + payload[: PAYLOAD_BYTES - 3]

    clock = StepClock()
    timed_saver(saver, clock)
    # Each model turn and each tool turn is one superstep.
    model = LoopModel("noop", steps=steps // 2 + 1, payload_bytes=PAYLOAD_BYTES)
    agent = Agent.builder("bench").llm(model).tools([noop]).checkpoint(saver).build()
    config = {"configurable": {"thread_id": f"bench-{name}"}, "recursion_limit": steps}
    start = time.perf_counter()
    try:
        agent.invoke({"messages": [HumanMessage("go")]}, config)
    except Exception as exc:  # the step limit ends the run on purpose
        if "stopped after" not in str(exc):
            raise
    seconds = time.perf_counter() - start
    done = len(clock.marks)
    history_s = median_time(lambda: saver.get_state_history(f"bench-{name}"), 3)
    meta_s = median_time(
        lambda: saver.get_state_history(f"bench-{name}", values=False), 5
    )
    return Result(
        f"agentmatic-{name}",
        done,
        seconds,
        clock.window(101, 200),
        clock.window(901, 1000),
        history_s,
        meta_s,
    )


def run_langgraph(name: str, checkpointer: Any, steps: int) -> Result:
    from typing import Annotated, TypedDict

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages

    class S(TypedDict):
        messages: Annotated[list, add_messages]

    payload = "x" * (PAYLOAD_BYTES - 60)

    def agent(state: S) -> dict:
        n = len(state["messages"])
        call = {"name": "noop", "args": {"payload": payload}, "id": f"c{n}"}
        return {"messages": [AIMessage(content="", tool_calls=[call])]}

    def tool(state: S) -> dict:
        last = state["messages"][-1]
        return {
            "messages": [
                ToolMessage(
                    content="ok:" + payload, tool_call_id=last.tool_calls[0]["id"]
                )
            ]
        }

    def route(state: S) -> str:
        return "tool" if len(state["messages"]) < steps else END

    graph = StateGraph(S)
    graph.add_node("agent", agent)
    graph.add_node("tool", tool)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tool", END])
    graph.add_edge("tool", "agent")
    clock = StepClock()
    timed_saver(checkpointer, clock)
    app = graph.compile(checkpointer=checkpointer)
    config = {
        "configurable": {"thread_id": f"lg-{name}"},
        "recursion_limit": steps + 10,
    }
    start = time.perf_counter()
    app.invoke({"messages": [HumanMessage("go")]}, config, durability="sync")
    seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    list(app.get_state_history(config))
    history_s = time.perf_counter() - t0
    return Result(
        f"langgraph-{name}",
        len(clock.marks),
        seconds,
        clock.window(101, 200),
        clock.window(901, 1000),
        history_s,
        None,
    )


def workloads(args: argparse.Namespace, tmp: Path) -> dict[str, Callable[[], Result]]:
    from agentmatic.checkpoint import MemorySaver

    out: dict[str, Callable[[], Result]] = {
        "agentmatic-memory": lambda: run_agentmatic(
            "memory", MemorySaver(), args.steps
        ),
    }
    try:
        from agentmatic.checkpoint import SQLiteSaver

        out["agentmatic-sqlite"] = lambda: run_agentmatic(
            "sqlite", SQLiteSaver(str(tmp / "am.sqlite")), args.steps
        )
    except (ImportError, AttributeError):
        pass
    try:
        from langgraph.checkpoint.memory import InMemorySaver

        out["langgraph-memory"] = lambda: run_langgraph(
            "memory", InMemorySaver(), args.steps
        )
    except ImportError:
        pass
    try:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        def lg_sqlite() -> Result:
            conn = sqlite3.connect(str(tmp / "lg.sqlite"), check_same_thread=False)
            return run_langgraph("sqlite", SqliteSaver(conn), args.steps)

        out["langgraph-sqlite"] = lg_sqlite
    except ImportError:
        pass
    from bench import postgres

    out.update(
        postgres.workloads(args.postgres, args.steps, run_agentmatic, run_langgraph)
    )
    return out


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}{unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--only", default="")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("AGENTMATIC_POSTGRES_URL"),
        help="a server where the run may create (and drop) its own databases",
    )
    args = parser.parse_args(argv)
    wanted = {w for w in args.only.split(",") if w}
    rows: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in workloads(args, Path(tmp)).items():
            if wanted and name not in wanted:
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(run())
    header = (
        f"{'workload':<22} {'steps':>6} {'steps/s':>9} {'101-200 ms':>11} "
        f"{'901-1000 ms':>12} {'late/early':>10} {'history s':>10} {'meta ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.name:<22} {r.steps:>6} {fmt(r.steps_per_s):>9} {fmt(r.early_ms):>11} "
            f"{fmt(r.late_ms):>12} {fmt(r.ratio):>10} {fmt(r.history_s):>10} "
            f"{fmt(None if r.meta_history_s is None else r.meta_history_s * 1000):>8}"
        )
    notes = [r for r in rows if r.note]
    if notes:
        print()
        for r in notes:
            print(f"{r.name}: {r.note}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
