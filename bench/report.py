"""The printed table and the targets, from the results dictionary."""

from __future__ import annotations

from typing import Any


def _get(results: dict[str, Any] | None, *path: Any) -> Any:
    node: Any = results
    for key in path:
        found = isinstance(node, dict) and key in node
        found |= isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node)
        if found:
            node = node[key]
        else:
            return None
    return node


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return float(a) / float(b)
    return None


def peer_figures(results: dict[str, Any]) -> tuple[float | None, float | None]:
    """pgqueuer's best jobs/s and the pgbench commit ceiling."""
    runs = _get(results, "peer", "pgqueuer", "runs") or []
    pgq = max((r["jobs_per_s"] for r in runs), default=None)
    ceiling = _get(results, "peer", "pgbench", "ceiling_tps")
    return pgq, ceiling


def _best_pgqueuer(results: dict[str, Any]) -> dict[str, Any] | None:
    runs = _get(results, "peer", "pgqueuer", "runs") or []
    return max(runs, key=lambda r: r["jobs_per_s"]) if runs else None


def _best_one_session(results: dict[str, Any]) -> dict[str, Any] | None:
    runs = _get(results, "throughput", "runs") or []
    return max((r["one_session"] for r in runs), key=lambda f: f["tasks_per_s"], default=None)


def _same_process_count(results: dict[str, Any]) -> tuple[int, float, float] | None:
    """(processes, our CPU ms per 1,000 tasks, pgqueuer's per 1,000 jobs) at the most worker
    processes both ran: our one-Session run with R runners, pgqueuer's with R workers."""
    ours = {
        r["runners"]: _get(r, "one_session", "cpu_ms_per_1000", "total")
        for r in _get(results, "throughput", "runs") or []
    }
    theirs = {
        r["workers"]: _get(r, "cpu_ms_per_1000", "total")
        for r in _get(results, "peer", "pgqueuer", "runs") or []
    }
    common = [n for n in ours if n in theirs and ours[n] is not None and theirs[n] is not None]
    if not common:
        return None
    n = max(common)
    return n, ours[n], theirs[n]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pgq, _ = peer_figures(results)
    best = _best_one_session(results)
    ours = best["tasks_per_s"] if best else None
    ratio = _ratio(ours, pgq)
    out.append(
        {
            "target": "throughput >= 1.0x pgqueuer jobs/s (batch 10)",
            "measured": ratio,
            "unit": "x",
            "met": None if ratio is None else ratio >= 1.0,
        }
    )
    p50 = _get(results, "latency", "all_ms", "p50")
    p99 = _get(results, "latency", "all_ms", "p99")
    p50_ratio = _ratio(p50, _get(results, "peer", "pgqueuer", "latency_ms", "p50"))
    out.append(
        {
            "target": "dispatch latency p50 <= 1.5x pgqueuer's p50",
            "measured": p50_ratio,
            "unit": "x",
            "met": None if p50_ratio is None else p50_ratio <= 1.5,
        }
    )
    out.append(
        {
            "target": "dispatch latency p99 <= 10 ms",
            "measured": p99,
            "unit": "ms",
            "met": None if p99 is None else p99 <= 10.0,
        }
    )
    # Like for like: our runner processes against as many pgqueuer workers (every process
    # costs CPU of its own, busy or not), at the most processes both ran.
    same = _same_process_count(results)
    cpu_ratio = _ratio(*same[1:]) if same else None
    out.append(
        {
            "target": "CPU per task, all processes <= pgqueuer's per job"
            + (f" ({same[0]} runner processes / workers)" if same else ""),
            "measured": cpu_ratio,
            "unit": "x",
            "met": None if cpu_ratio is None else cpu_ratio <= 1.0,
        }
    )
    dag = _get(results, "dag", "runs") or []
    biggest = max(dag, key=lambda r: r["nodes"]) if dag else None
    create = biggest["create_s"] if biggest else None
    out.append(
        {
            "target": f"{_num(biggest['nodes'] if biggest else None)}-node Session created <= 3 s",
            "measured": create,
            "unit": "s",
            "met": None if create is None else create <= 3.0,
        }
    )
    growth = _get(results, "dag", "per_node_growth")
    out.append(
        {
            "target": "per-node run cost, largest DAG / smallest <= 1.2",
            "measured": growth,
            "unit": "x",
            "met": None if growth is None else growth <= 1.2,
        }
    )
    cost = _get(results, "telemetry", "default", "throughput_cost_pct")
    out.append(
        {
            "target": "telemetry on at the default sampling costs <= 5 % of throughput",
            "measured": cost,
            "unit": "%",
            "met": None if cost is None else cost <= 5.0,
        }
    )
    rss = _get(results, "streams", "scheduler_rss_mb")
    out.append(
        {
            "target": f"{_num(_get(results, 'streams', 'instances'))} idle runners:"
            " scheduler RSS <= 300 MB",
            "measured": rss,
            "unit": "MB",
            "met": None if rss is None else rss <= 300,
        }
    )
    # The scheduler's own tables (pg_stat_user_tables) and write statements, over the same
    # scheduler's baseline window with no runner: what the instances cause. Database-wide
    # tuple counts also move with autovacuum's catalog writes, so they are shown, not judged.
    tables = _get(results, "streams", "tables_written_per_minute")
    writes = None if tables is None else sum(tables.values())
    statements = _get(results, "streams", "db_per_minute_due_to_runners", "write_statements")
    out.append(
        {
            "target": "idle heartbeats cause no PostgreSQL writes (tuples/min to our tables)",
            "measured": writes,
            "unit": "tuples/min",
            "met": None
            if writes is None
            else round(writes) <= 0 and (statements is None or round(statements) <= 0),
        }
    )
    return out


def _cpu_vs_pgqueuer(results: dict[str, Any], runners: int, total: float) -> str:
    """Our CPU per task over pgqueuer's with as many workers (else its best run's)."""
    runs = _get(results, "peer", "pgqueuer", "runs") or []
    same = [r for r in runs if r["workers"] == runners and r.get("cpu_ms_per_1000")]
    if same:
        return f"{_num(_ratio(total, same[0]['cpu_ms_per_1000']['total']), 2)}x ({runners}w)"
    best = _best_pgqueuer(results)
    return f"{_num(_ratio(total, _get(best, 'cpu_ms_per_1000', 'total')), 2)}x (best)"


def _ways(messages: dict[str, float], stream: str) -> float:
    return messages.get(f"{stream} sent", 0.0) + messages.get(f"{stream} received", 0.0)


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    pgq, ceiling = peer_figures(results)

    def row(*cells: str) -> None:
        lines.append("| " + " | ".join(cells) + " |")

    lines.append(f"heat-scheduler benchmark ({results.get('mode')} mode)")
    pg = results.get("postgres", {})
    lines.append(
        f"PostgreSQL {pg.get('server_version')} fsync={pg.get('fsync')}"
        f" synchronous_commit={pg.get('synchronous_commit')};"
        f" {_get(results, 'machine', 'cpus')} CPUs; took {_num(results.get('elapsed_s'))} s"
    )
    lines.append("")
    lines.append("| scenario | figure | value | vs pgqueuer | vs pgbench ceiling |")
    lines.append("| --- | --- | --- | --- | --- |")
    for r in _get(results, "throughput", "runs") or []:
        for part, label in (("one_session", "1 Session"), ("many_sessions", "Sessions")):
            fig = r[part]
            what = (
                f"{label} x {_num(fig['nodes'])} nodes"
                if part == "one_session"
                else f"{fig['sessions']} x {fig['nodes_per_session']} nodes"
            )
            row(
                "1 throughput",
                f"{what}, R={r['runners']} x cap {r['capacity_per_runner']}",
                f"{_num(fig['tasks_per_s'])} tasks/s (sched CPU {_num(fig['scheduler_cpu_pct'])}%)",
                _num(_ratio(fig["tasks_per_s"], pgq), 2) + "x",
                _num(_ratio(fig["tasks_per_s"], ceiling), 2) + "x",
            )
    for r in _get(results, "throughput", "runs") or []:
        cpu = r["one_session"].get("cpu_ms_per_1000")
        if cpu:
            row(
                "1 CPU per 1,000 tasks",
                f"1 Session, R={r['runners']}",
                f"{_num(cpu['total'])} ms: scheduler {_num(cpu['scheduler'])}, runners"
                f" {_num(cpu['runners'])}, PostgreSQL {_num(cpu['postgres'])}",
                _cpu_vs_pgqueuer(results, r["runners"], cpu["total"]),
                "",
            )
    for r in _get(results, "throughput", "runs") or []:
        for part, label in (("one_session", "1 Session"), ("many_sessions", "many Sessions")):
            messages = r[part].get("messages_per_task")
            if messages:
                row(
                    "1 messages per task",
                    f"{label}, R={r['runners']} (ClaimTask + PostResult, both ways)",
                    f"{_num(messages['per_task'], 2)}: claim"
                    f" {_num(_ways(messages, 'ClaimTask'), 2)}, result"
                    f" {_num(_ways(messages, 'PostResult'), 2)}; heartbeat"
                    f" {_num(_ways(messages, 'Heartbeat'), 3)}",
                    "",
                    "",
                )
    if "error" in (results.get("throughput") or {}):
        row("1 throughput", "error", str(results["throughput"]["error"]), "", "")
    lat = results.get("latency") or {}
    pgq_lat = _get(results, "peer", "pgqueuer", "latency_ms") or {}
    for key, label in (
        ("all_ms", "all nodes"),
        ("roots_ms", "roots"),
        ("children_ms", "children"),
        ("ready_to_claim_ms", "part: ready -> claim begins"),
        ("claim_to_process_ms", "part: claim begins -> process()"),
    ):
        p = lat.get(key)
        if p and p.get("count"):
            row(
                "2 dispatch latency",
                f"{label} @ {_num(lat.get('offered_nodes_per_s'))} nodes/s, n={p['count']}",
                f"p50 {_num(p['p50'], 2)} / p90 {_num(p['p90'], 2)} / p99 {_num(p['p99'], 2)}"
                f" / max {_num(p['max'], 2)} ms",
                (_num(_ratio(p["p50"], pgq_lat.get("p50")), 2) + "x p50")
                if key == "all_ms"
                else "",
                "",
            )
    if "error" in lat:
        row("2 dispatch latency", "error", str(lat["error"]), "", "")
    for r in _get(results, "dag", "runs") or []:
        row(
            "3 DAG size",
            f"{_num(r['nodes'])} nodes, {_num(r['edges'])} edges",
            f"create {_num(r['create_s'], 2)} s; run {_num(r['per_node_ms'], 3)} ms/node"
            f" ({_num(r['tasks_per_s'])} tasks/s)",
            _num(_ratio(r["tasks_per_s"], pgq), 2) + "x",
            _num(_ratio(r["tasks_per_s"], ceiling), 2) + "x",
        )
    growth = _get(results, "dag", "per_node_growth")
    if growth is not None:
        row("3 DAG size", "per-node cost, largest / smallest", f"{_num(growth, 2)}x", "", "")
    if "error" in (results.get("dag") or {}):
        row("3 DAG size", "error", str(results["dag"]["error"]), "", "")
    fan = results.get("fanout") or {}
    if "per_node_ms" in fan:
        row(
            "4 fan-out/fan-in",
            f"1 -> {_num(fan['width'])} -> 1",
            f"{_num(fan['per_node_ms'], 3)} ms/node; fan-out {_num(fan['fan_out_ms'], 1)} ms,"
            f" fan-in {_num(fan['fan_in_ms'], 1)} ms",
            _num(_ratio(1000 / fan["per_node_ms"], pgq), 2) + "x",
            "",
        )
    elif "error" in fan:
        row("4 fan-out/fan-in", "error", str(fan["error"]), "", "")
    for r in _get(results, "replicas", "runs") or []:
        cpu = r.get("cpu_ms_per_1000") or {}
        row(
            "8 replicas",
            f"{r.get('sessions', 1)} Session(s), {_num(r['nodes'])} nodes, R={r['runners']} over"
            f" {r['replicas']} replica(s)",
            f"{_num(r['tasks_per_s'])} tasks/s; CPU {_num(cpu.get('total'))} ms per 1,000",
            _num(_ratio(r["tasks_per_s"], pgq), 2) + "x",
            _num(_ratio(r["tasks_per_s"], ceiling), 2) + "x",
        )
    for key, label in (
        ("second_replica_gain", "1 Session"),
        ("second_replica_gain_many", "many Sessions"),
    ):
        gain = _get(results, "replicas", key)
        if gain is not None:
            row("8 replicas", f"second replica's gain, {label}", f"{_num(gain, 2)}x", "", "")
    if "error" in (results.get("replicas") or {}):
        row("8 replicas", "error", str(results["replicas"]["error"]), "", "")
    st = results.get("streams") or {}
    if "scheduler_rss_mb" in st:
        per = st["db_per_minute"]
        row(
            "5 idle streams",
            f"{_num(st['instances'])} instances, heartbeat {_num(st['heartbeat_interval_s'], 1)} s",
            f"RSS {_num(st['scheduler_rss_mb_before'])} -> {_num(st['scheduler_rss_mb'])} MB;"
            f" CPU {_num(st['scheduler_cpu_pct'], 1)}%"
            f" (no runner: {_num(st.get('scheduler_cpu_pct_baseline'), 1)}%)",
            "",
            "",
        )
        for key, label in (
            ("db_per_minute", "with the instances"),
            ("db_per_minute_baseline", "baseline, no runner"),
        ):
            per = st[key]
            row(
                "5 idle streams",
                f"PostgreSQL per minute, {label}",
                f"{_num(per.get('tuples_written'))} tuples written,"
                f" {_num(per.get('write_statements'))} write statements"
                f" ({_num(per.get('statements'))} statements in all),"
                f" {_num(per.get('commits'))} commits, {_num(per.get('wal_records'))} WAL records",
                "",
                "",
            )
        tables = st.get("tables_written_per_minute") or {}
        if tables:
            row(
                "5 idle streams",
                "tuples written per minute, by table",
                ", ".join(f"{k} {_num(v)}" for k, v in sorted(tables.items())),
                "",
                "",
            )
    elif "error" in st:
        row("5 idle streams", "error", str(st["error"]), "", "")
    fair = results.get("fairness") or {}
    small = fair.get("small_behind_big") or {}
    if "ratio" in small:
        row(
            "9 fairness",
            f"3-node chain behind {_num(small['big_nodes'])} ready nodes,"
            f" R={small['runners']} x cap {small['capacity_per_runner']}",
            f"{_num(small['small_behind_big_s'] * 1000)} ms vs"
            f" {_num(small['small_alone_s'] * 1000)} ms alone ({_num(small['ratio'], 2)}x);"
            " the big one"
            f" {_num(100 * small['big_done_when_small_ended'])}% done then",
            "",
            "",
        )
    shares = fair.get("shares_under_weights") or {}
    if "team_a" in shares:
        row(
            "9 fairness",
            f"weights a=3, b=1; first {_num(shares['window_dispatches'])} dispatches",
            f"{_num(shares['team_a'])} : {_num(shares['team_b'])} ({_num(shares['ratio'], 2)} : 1)",
            "",
            "",
        )
    claims = fair.get("claims") or {}
    if "many_sessions" in claims:
        one, many = claims["one_session"], claims["many_sessions"]
        for credits in (1, 32):
            key = f"claim_{credits}_ms"
            row(
                "9 fairness",
                f"claim of {credits}, {_num(many['queued_nodes'])} queued: 1 Session vs"
                f" {_num(many['sessions'])}",
                f"p50 {_num(one[key]['p50'], 2)} ms vs {_num(many[key]['p50'], 2)} ms"
                f" (p90 {_num(one[key]['p90'], 2)} vs {_num(many[key]['p90'], 2)})",
                "",
                "",
            )
    if "error" in fair:
        row("9 fairness", "error", str(fair["error"]), "", "")
    cp = results.get("critical_path") or {}
    if "speedup" in cp:
        row(
            "10 critical path",
            f"chain of {cp['chain']} + {cp['branches']} branches of 2, {_num(cp['sleep_ms'])} ms"
            f" each, 1 runner x cap {cp['runner_capacity']}",
            f"makespan {_num(cp['makespan_critical_path_s'], 2)} s critical path first,"
            f" {_num(cp['makespan_dag_order_s'], 2)} s DAG order ({_num(cp['speedup'], 2)}x);"
            f" bound {_num(cp['lower_bound_s'], 2)} s",
            "",
            "",
        )
    elif "error" in cp:
        row("10 critical path", "error", str(cp["error"]), "", "")
    for r in _get(results, "peer", "pgbench", "runs") or []:
        row(
            "6 pgbench",
            f"one-row UPDATE, {r['clients']} clients",
            f"{_num(r['tps'])} commits/s",
            "",
            "",
        )
    for r in _get(results, "peer", "pgqueuer", "runs") or []:
        row(
            "6 pgqueuer",
            f"{_num(r['jobs'])} no-op jobs, {r['workers']} worker(s), batch {r['batch_size']}",
            f"{_num(r['jobs_per_s'])} jobs/s",
            "1.00x" if r["jobs_per_s"] == pgq else "",
            _num(_ratio(r["jobs_per_s"], ceiling), 2) + "x",
        )
    for r in _get(results, "peer", "pgqueuer", "runs") or []:
        cpu = r.get("cpu_ms_per_1000")
        if cpu:
            row(
                "6 pgqueuer",
                f"CPU per 1,000 jobs, {r['workers']} worker(s)",
                f"{_num(cpu['total'])} ms: workers {_num(cpu['workers'])},"
                f" PostgreSQL {_num(cpu['postgres'])}",
                "",
                "",
            )
    if pgq_lat.get("count"):
        row(
            "6 pgqueuer",
            f"enqueue -> start @ {_num(_get(results, 'peer', 'pgqueuer', 'latency_rate'))} jobs/s",
            f"p50 {_num(pgq_lat['p50'], 2)} / p90 {_num(pgq_lat['p90'], 2)} / p99"
            f" {_num(pgq_lat['p99'], 2)} / max {_num(pgq_lat['max'], 2)} ms",
            "",
            "",
        )
    if "error" in (results.get("peer") or {}):
        row("6 peer", "error", str(results["peer"]["error"]), "", "")
    tel = results.get("telemetry") or {}
    for mode, label in (("off", "off"), ("default", "on, default sampling"), ("full", "on, 100 %")):
        fig = tel.get(mode)
        if not fig:
            continue
        lat = fig["ready_to_claim_ms"]
        cost = fig.get("throughput_cost_pct")
        row(
            "7 telemetry",
            f"{label}: {_num(_get(tel, 'sizes', 'sessions'))} x"
            f" {_num(_get(tel, 'sizes', 'nodes_per_session'))} nodes; ready -> claim",
            f"{_num(fig['tasks_per_s'])} tasks/s"
            + (f" ({_num(cost, 1)} % cost)" if cost is not None else "")
            + f"; p50 {_num(lat.get('p50'), 2)} / p99 {_num(lat.get('p99'), 2)} ms;"
            f" sched CPU {_num(fig['scheduler_cpu_ms_per_task'], 3)} ms/task;"
            f" {_num(fig['spans'])} spans",
            _num(_ratio(fig["tasks_per_s"], pgq), 2) + "x",
            "",
        )
    if "error" in tel:
        row("7 telemetry", "error", str(tel["error"]), "", "")
    lines.append("")
    lines.append("| target | measured | met |")
    lines.append("| --- | --- | --- |")
    for t in results.get("targets", []):
        digits = 2 if t["unit"] in ("x", "ms", "s") else 0
        met = {True: "yes", False: "NO", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {_num(t['measured'], digits)} {t['unit']} | {met} |")
    return "\n".join(lines)
