"""`ringgate status [--json]` and `ringgate top`: an instance's state, read from shared memory.

Nothing here goes through HTTP, so it answers while every worker is wedged or stopped, and
nothing here can write: each ring's 4 KiB header and the metrics segment are mapped read-only,
no metrics row is taken, no lock is touched (trying the supervisor's instance lock could make a
supervisor starting at that moment give up). Records/s come from two samples of the counters.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import shutil
import signal
import sys
import time
from typing import Any, TextIO

from .metrics import MetricsView, client_totals, segment_path
from .process import pid_alive, process_cmdline, process_state
from .ring import Ring, RingError, existing_rings, segment_name
from .ring import layout as L
from .ring import segment_path as shm_path


class InstanceNotFound(Exception):
    pass


class _HeaderOnly:
    """Stands in for a ring implementation: a status reader reads header words and calls no ring
    function, so it needs neither the C extension nor the implementation that made the ring."""

    def __init__(self, impl_id: int) -> None:
        self.IMPL = impl_id


def _read_ring(instance: str, index: int) -> dict[str, Any]:
    name = segment_name(instance, index)
    fd = os.open(shm_path(name), os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, L.HEADER_LENGTH, prot=mmap.PROT_READ)
    except BaseException:
        os.close(fd)
        raise
    impl_id = int.from_bytes(mm[L.IMPL_OFFSET : L.IMPL_OFFSET + 4], "little")
    try:
        ring = Ring(name, fd, mm, _HeaderOnly(impl_id))
    except BaseException:
        mm.close()
        os.close(fd)
        raise
    try:
        pid = ring.flusher_pid
        oldest = ring.oldest_pending_ns
        used = ring.used_bytes
        return {
            "ring": index,
            "impl": L.IMPL_NAMES.get(impl_id, str(impl_id)),
            "capacity_bytes": ring.capacity,
            "used_bytes": used,
            "fill": used / ring.capacity,
            "producer_position": ring.producer_position,
            "consumer_position": ring.consumer_position,
            "epoch": ring.epoch,
            "flusher_pid": pid,
            "flusher_alive": pid > 0 and pid_alive(pid),
            "flusher_state": process_state(pid) if pid > 0 else None,
            "draining": bool(ring.draining),
            "oldest_age_s": max(0.0, (time.time_ns() - oldest) / 1e9) if oldest else 0.0,
            "sink_reason": ring.sink_reason,
            "claims_abandoned": ring.unblocked_count,
        }
    finally:
        ring.close()


def _supervisor(instance: str) -> dict[str, Any]:
    """The pid the supervisor wrote into its lock file, and whether it still runs."""
    try:
        with open(shm_path(f"{instance}.lock"), "rb") as f:
            text = f.read(32).decode(errors="replace").strip()
    except OSError:
        return {"pid": None, "alive": False, "state": None}
    pid = int(text) if text.isdigit() else None
    alive = pid is not None and pid_alive(pid) and _is_ringgate(pid)
    return {"pid": pid, "alive": alive, "state": process_state(pid) if alive else None}


def _is_ringgate(pid: int) -> bool:
    """Guards against a reused pid: every ringgate process runs `... ringgate ...` (Granian forks
    its workers from the supervisor, so they keep its command line)."""
    return any("ringgate" in arg for arg in process_cmdline(pid))


def snapshot(instance: str) -> dict[str, Any]:
    """One reading of every ring header and the summed counters; InstanceNotFound if there are none."""
    indexes = existing_rings(instance)
    has_metrics = os.path.exists(segment_path(instance))
    if not indexes and not has_metrics:
        raise InstanceNotFound(
            f"no ringgate instance {instance!r} on this host ({shm_path(segment_name(instance, 0))} "
            "does not exist): run with the RINGGATE_INSTANCE or RINGGATE_PORT that the server has"
        )
    taken = time.monotonic()
    rings = []
    for i in indexes:
        try:
            rings.append(_read_ring(instance, i))
        except FileNotFoundError:  # drained and unlinked between the listing and now
            pass
    totals: dict[str, int] | None = None
    owners: list[int] = []
    try:
        view = MetricsView(instance)
    except FileNotFoundError:
        pass
    else:
        try:
            totals = view.totals()
            owners = view.owners()
        finally:
            view.close()
    flushers = {r["flusher_pid"] for r in rings}
    processes = [{"pid": r["flusher_pid"], "role": "flusher", "ring": r["ring"], "state": r["flusher_state"]}
                 for r in rings if r["flusher_alive"]]
    for pid in sorted(set(owners) - flushers):
        state = process_state(pid)
        if state is not None and state != "zombie" and _is_ringgate(pid):
            processes.append({"pid": pid, "role": "worker", "ring": None, "state": state})
    return {
        "instance": instance,
        "time": time.time(),
        "monotonic": taken,
        "supervisor": _supervisor(instance),
        "rings": rings,
        "processes": processes,
        "totals": _summary(totals),
    }


def _summary(totals: dict[str, int] | None) -> dict[str, int] | None:
    if totals is None:
        return None
    out = {
        "records_accepted": totals["records_accepted_total"],
        "records_delivered": totals["records_delivered_total"],
        "records_dead_lettered": totals["records_dead_lettered_total"],
        "records_rejected": sum(v for k, v in totals.items() if k.startswith("records_rejected_total:")),
        "delivery_retries": totals["delivery_retries_total"],
        "batches_delivered": totals["batches_delivered_total"],
        "requests": sum(v for k, v in totals.items() if k.startswith("requests_total:")),
    }
    out["requests_by_code"] = {k.split(":", 1)[1]: v for k, v in totals.items()
                               if k.startswith("requests_total:") and v}
    out["records_accepted_by_client"] = client_totals(totals)
    return out


def rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """Per-second rates between two snapshots; None where a counter went back (a new run)."""
    dt = after["monotonic"] - before["monotonic"]
    if dt <= 0:
        return None

    def per_s(a: int, b: int) -> float | None:
        return None if b < a else (b - a) / dt

    out: dict[str, Any] = {"interval_s": dt}
    t0, t1 = before["totals"], after["totals"]
    for key, name in (("records_accepted", "records_in_per_s"), ("records_delivered", "records_out_per_s"),
                      ("requests", "requests_per_s"), ("records_rejected", "records_rejected_per_s"),
                      ("delivery_retries", "delivery_retries_per_s")):
        out[name] = per_s(t0[key], t1[key]) if t0 and t1 else None
    c0 = (t0 or {}).get("records_accepted_by_client", {})
    c1 = (t1 or {}).get("records_accepted_by_client", {})
    out["clients"] = {name: per_s(c0.get(name, 0), n) for name, n in c1.items()}
    old = {(r["ring"], r["epoch"]): r for r in before["rings"]}
    out["rings"] = []
    for r in after["rings"]:
        o = old.get((r["ring"], r["epoch"]))
        out["rings"].append({
            "ring": r["ring"],
            "in_bytes_per_s": per_s(o["producer_position"], r["producer_position"]) if o else None,
            "out_bytes_per_s": per_s(o["consumer_position"], r["consumer_position"]) if o else None,
        })
    return out


def status(instance: str, interval: float = 1.0) -> dict[str, Any]:
    first = snapshot(instance)
    if interval <= 0:
        first["rates"] = None
        return first
    time.sleep(interval)
    second = snapshot(instance)
    second["rates"] = rates(first, second)
    return second


# -- text ---------------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _rate(value: float | None, unit: str = "/s") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def render(snap: dict[str, Any]) -> str:
    lines = []
    sup = snap["supervisor"]
    sup_text = (f"supervisor pid {sup['pid']} {sup['state']}" if sup["alive"]
                else f"supervisor not running (last pid {sup['pid']})" if sup["pid"] else "no supervisor")
    impls = sorted({r["impl"] for r in snap["rings"]})
    lines.append(f"instance {snap['instance']}  {sup_text}  {len(snap['rings'])} ring(s) "
                 f"({', '.join(impls) or '-'})  {time.strftime('%H:%M:%S', time.localtime(snap['time']))}")
    r = snap.get("rates") or {}
    t = snap["totals"]
    if t is None:
        lines.append("no metrics segment (the supervisor is not running or was killed before it made one)")
    else:
        lines.append(
            f"records in {_rate(r.get('records_in_per_s'))}  out {_rate(r.get('records_out_per_s'))}  "
            f"rejected {_rate(r.get('records_rejected_per_s'))}  requests {_rate(r.get('requests_per_s'))}  "
            f"retries {_rate(r.get('delivery_retries_per_s'))}"
        )
        codes = " ".join(f"{k}:{v}" for k, v in t["requests_by_code"].items()) or "-"
        lines.append(
            f"total accepted {t['records_accepted']:,}  delivered {t['records_delivered']:,}  "
            f"dead-lettered {t['records_dead_lettered']:,}  rejected {t['records_rejected']:,}  "
            f"retries {t['delivery_retries']:,}  requests by code {codes}"
        )
    lines.append("")
    lines.append(f"{'ring':>4} {'fill':>6} {'used':>10} {'capacity':>10} {'in':>11} {'out':>11} "
                 f"{'producer':>14} {'consumer':>14} {'flusher':>8} {'state':>9} {'oldest':>7}  sink")
    ring_rates = {x["ring"]: x for x in r.get("rings", [])}
    for ring in snap["rings"]:
        rr = ring_rates.get(ring["ring"], {})
        flusher = "dead" if ring["flusher_pid"] and not ring["flusher_alive"] else (ring["flusher_state"] or "-")
        sink = ring["sink_reason"] or ("draining" if ring["draining"] else "ok")
        if ring["draining"] and ring["sink_reason"]:
            sink = "draining; " + sink
        lines.append(
            f"{ring['ring']:>4} {ring['fill']:>6.1%} {_bytes(ring['used_bytes']):>10} "
            f"{_bytes(ring['capacity_bytes']):>10} {_rate(rr.get('in_bytes_per_s'), ' B/s'):>11} "
            f"{_rate(rr.get('out_bytes_per_s'), ' B/s'):>11} {ring['producer_position']:>14} "
            f"{ring['consumer_position']:>14} {ring['flusher_pid'] or '-':>8} {flusher:>9} "
            f"{ring['oldest_age_s']:>6.1f}s  {sink}"
        )
    clients = r.get("clients") or {}
    if clients:
        lines.append("")
        lines.append("records in per client: " + "  ".join(f"{name} {_rate(v)}" for name, v in sorted(clients.items())))
    lines.append("")
    procs = snap["processes"]
    workers = [p for p in procs if p["role"] == "worker"]
    lines.append(f"workers ({len(workers)}): " + (", ".join(f"{p['pid']} {p['state']}" for p in workers) or "none seen"))
    return "\n".join(lines)


def print_status(instance: str, as_json: bool, interval: float, out: TextIO = sys.stdout) -> int:
    try:
        snap = status(instance, interval)
    except (InstanceNotFound, RingError) as exc:
        print(f"ringgate: {exc}", file=sys.stderr)
        return 1
    snap.pop("monotonic")
    if as_json:
        out.write(json.dumps(snap, indent=2) + "\n")
    else:
        out.write(render(snap) + "\n")
    return 0


# -- top ----------------------------------------------------------------------------------------


def top(instance: str, interval: float = 1.0, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> int:
    """Refresh every `interval` seconds until q (or Ctrl-C); only the stdlib's termios."""
    fd = stdin.fileno() if stdin is not None else -1
    interactive = fd >= 0 and os.isatty(fd)
    saved = None
    if interactive:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still signals
    # SIGTERM and a closed terminal end the loop like q does, restoring the terminal
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, cursor hidden (as top does)
    try:
        before = None
        while True:
            text, before = _frame(instance, before)
            out.write("\x1b[H\x1b[2J" + text + "\n")
            out.flush()
            deadline = time.monotonic() + interval
            while (remaining := deadline - time.monotonic()) > 0:
                if not interactive:
                    time.sleep(remaining)
                    break
                readable, _, _ = select.select([fd], [], [], remaining)
                if readable:
                    key = os.read(fd, 1)
                    if key in (b"q", b"Q", b""):
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _frame(instance: str, before: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """The screen, and the snapshot the next frame's rates start from."""
    width = shutil.get_terminal_size((120, 40)).columns
    title = f"ringgate top: {instance} (refreshed every second; q to quit)"
    try:
        snap = snapshot(instance)
    except (InstanceNotFound, RingError) as exc:
        return f"{title}\n\n{exc}", None
    snap["rates"] = rates(before, snap) if before is not None else None
    return "\n".join(line[:width] for line in [title, ""] + render(snap).splitlines()), snap


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
