"""A spike of webhooks against two autoscalers: hookline's lag scaler and a CPU-based HPA.

    python bench/autoscaling_sim.py [--rate 2000] [--slow-rate 500] [--svg docs/autoscaling.svg]

A discrete simulation, one step per second. Both autoscalers run the operator's own
decision function, :func:`hookline.operator.scaler.decide` (desired = ceil(metric /
target), 10 % tolerance, [min, max], scale-up capped at max(n + 4, 2n) per 15 s sync,
scale-down to the highest recommendation of a 300 s window) — what differs is the
metric, as in a real cluster:

* **lag**: every ``--interval`` seconds (15, ``HOOKLINE_SCALE_INTERVAL``'s default) the
  pool's work (entries waiting, as ``Queue.backlog`` counts them) over ``--target``
  entries per replica, the operator's default 1000;
* **cpu**: every 15 s (the HPA's sync period) the pods' CPU, averaged over the last
  15 s (metrics-server's resolution), against 70 % of a core per pod. A replica
  delivering ``--rate`` webhooks/s uses one core: CPU saturates at 100 % however long
  the queue, which is why a CPU HPA grows by at most 1/0.7 per sync in a backlog. Pods
  not ready yet count as 0 % (what the HPA assumes for them when scaling up).

Common to both: ``--baseline`` webhooks/s all the time, the spike spread over
``--spike-seconds`` from t = 60 s, pods ready ``--startup`` seconds after they are
asked for, removed at once, min 1 and max ``--max`` replicas. Prints one JSON line per
figure (drain time: from the spike's start until the backlog is empty again; worst
wait: the age of the oldest waiting webhook, first in first out; replica-minutes over
the run; the second of the last change of replicas) and writes the plot with
matplotlib (``pip install -e '.[bench]'``). ``--slow-rate`` adds a second scenario,
endpoints slow enough that a replica delivers only that many webhooks/s.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from hookline.operator.scaler import Decision, Policy, decide

SYNC = 15  # the HPA's sync period, and HOOKLINE_SCALE_INTERVAL's default
SPIKE_AT = 60


@dataclass
class Run:
    """One autoscaler's trace, one entry per second."""

    name: str
    replicas: list[int] = field(default_factory=list)  # spec.replicas
    ready: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    oldest: list[int] = field(default_factory=list)  # age of the oldest waiting webhook, s
    decisions: list[tuple[int, Decision]] = field(default_factory=list)


def arrivals(args: argparse.Namespace, seconds: int) -> list[int]:
    out = [args.baseline] * seconds
    per_second = args.spike // args.spike_seconds
    for t in range(SPIKE_AT, SPIKE_AT + args.spike_seconds):
        out[t] += per_second
    out[SPIKE_AT] += args.spike - per_second * args.spike_seconds
    return out


def simulate(args: argparse.Namespace, metric: str) -> Run:
    seconds = args.seconds
    arriving = arrivals(args, seconds)
    if metric == "lag":
        policy = Policy(min_replicas=1, max_replicas=args.max, target=args.target, window=300)
    else:  # CPU in millicores: 70 % of one core per replica
        policy = Policy(min_replicas=1, max_replicas=args.max, target=700, window=300)
    run = Run(metric)
    ready_at: list[int] = [0]  # one pod, ready from the start
    backlog = 0
    cpu: list[float] = []  # cores used per second, all pods together
    arrived = delivered = 0
    cumulative: list[int] = []  # webhooks arrived up to each second (FIFO ages)
    first_waiting = 0  # the second in which the oldest waiting webhook arrived
    history: tuple[tuple[float, int], ...] = ((0.0, 1),)
    interval = args.interval if metric == "lag" else SYNC
    for t in range(seconds):
        if t % interval == 0 and t > 0:
            current = len(ready_at)
            if metric == "lag":
                value = backlog
            else:
                window = cpu[-SYNC:]
                value = round(1000 * sum(window) / len(window))
            d = decide(policy, current, value, history, float(t))
            history = d.history
            run.decisions.append((t, d))
            if d.replicas > current:
                ready_at += [t + args.startup] * (d.replicas - current)
            elif d.replicas < current:
                ready_at = sorted(ready_at)[: d.replicas]  # the newest go first
        ready = sum(1 for r in ready_at if r <= t)
        capacity = ready * args.rate
        backlog += arriving[t]
        arrived += arriving[t]
        cumulative.append(arrived)
        done = min(backlog, capacity)
        backlog -= done
        delivered += done
        cpu.append(done / args.rate)
        while first_waiting < t and cumulative[first_waiting] <= delivered:
            first_waiting += 1
        run.replicas.append(len(ready_at))
        run.ready.append(ready)
        run.backlog.append(backlog)
        run.oldest.append(t - first_waiting if backlog else 0)
    return run


def figures(run: Run) -> dict[str, float]:
    drained = next((t for t in range(SPIKE_AT + 1, len(run.backlog)) if run.backlog[t] == 0), None)
    changes = [t for t in range(1, len(run.replicas)) if run.replicas[t] != run.replicas[t - 1]]
    return {
        "drain_seconds": float(drained - SPIKE_AT) if drained is not None else math.inf,
        "peak_backlog": float(max(run.backlog)),
        "worst_wait_seconds": float(max(run.oldest)),
        "peak_replicas": float(max(run.replicas)),
        "replica_minutes": sum(run.replicas) / 60,
        "last_change_at": float(changes[-1]) if changes else 0.0,
    }


def plot(scenarios: list[tuple[argparse.Namespace, list[Run]]], path: Path) -> None:
    """One column per scenario: replicas above, backlog below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "hookline"  # the same file for the same figures
    fig, axes = plt.subplots(
        2, len(scenarios), figsize=(7 * len(scenarios), 6.5), sharex=True, squeeze=False
    )
    colours = {"lag": "#1f77b4", "cpu": "#d62728"}
    for column, (args, runs) in enumerate(scenarios):
        top, bottom = axes[0][column], axes[1][column]
        labels = {
            "lag": f"lag: {args.target:,} entries per replica, every {args.interval} s",
            "cpu": "CPU HPA: 70 % of a core per replica, every 15 s",
        }
        for run in runs:
            t = range(len(run.replicas))
            colour = colours[run.name]
            top.step(t, run.replicas, where="post", color=colour, label=labels[run.name])
            top.step(t, run.ready, where="post", color=colour, alpha=0.35, ls="--")
            drained = figures(run)["drain_seconds"]
            bottom.plot(
                t, run.backlog, color=colour, label=f"{run.name}: drained in {drained:.0f} s"
            )
        top.set_title(
            f"{args.spike:,} webhooks in {args.spike_seconds} s at t = {SPIKE_AT} s, "
            f"{args.rate:,}/s per replica",
            fontsize=11,
        )
        top.set_ylabel("replicas (dashed: ready)")
        bottom.set_ylabel("backlog (webhooks waiting)")
        bottom.set_xlabel(f"seconds (pods ready {args.startup} s after the decision)")
        bottom.set_xlim(0, len(runs[0].replicas))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spike", type=int, default=100_000, help="webhooks in the spike")
    p.add_argument("--spike-seconds", type=int, default=10, help="seconds the spike lasts")
    p.add_argument("--baseline", type=int, default=300, help="webhooks/s outside the spike")
    p.add_argument("--rate", type=int, default=2000, help="deliveries/s per replica")
    p.add_argument("--target", type=int, default=1000, help="lag target per replica")
    p.add_argument("--interval", type=int, default=SYNC, help="seconds between lag decisions")
    p.add_argument("--max", type=int, default=20, help="max replicas (both autoscalers)")
    p.add_argument("--startup", type=int, default=10, help="seconds until a new pod delivers")
    p.add_argument("--seconds", type=int, default=480, help="length of the run")
    p.add_argument(
        "--slow-rate",
        type=int,
        default=500,
        help="deliveries/s per replica of a second scenario, slow endpoints (0: none)",
    )
    p.add_argument("--svg", type=Path, default=None, help="write the plot here (.svg, .png)")
    args = p.parse_args()
    scenarios = [(args, [simulate(args, "lag"), simulate(args, "cpu")])]
    if args.slow_rate:
        slow = argparse.Namespace(**{**vars(args), "rate": args.slow_rate})
        scenarios.append((slow, [simulate(slow, "lag"), simulate(slow, "cpu")]))
    for scenario, runs in scenarios:
        for run in runs:
            for name, value in figures(run).items():
                line = {"autoscaler": run.name, "rate": scenario.rate, "name": name}
                print(json.dumps({**line, "value": round(value, 1)}))
    if args.svg is not None:
        plot(scenarios, args.svg)


if __name__ == "__main__":
    main()
