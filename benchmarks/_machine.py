"""The machine `bench.py` runs on, and whether it was idle: CPU, device, threads, load, other processes.

A timing is worth printing only if nothing else ran while it was taken. `Watch`
measures that over a stretch of time from /proc: the CPU time every core spent
busy (steal time included: a virtual machine's neighbours), minus this process's
own and its finished children's, is what the others used. A figure is marked busy
when the others used more than `OTHERS_LIMIT` of a core on average, when the
1-minute load average exceeds the cores by more than half a thread (more runnable
threads than cores, this process's included), or when a framework runs more threads per op than there are
cores. Linux only; elsewhere the check says it could not look.
"""

import os
import platform
import resource
import sys
import time
from pathlib import Path

#: The most CPU, in cores on average, that other processes may use during a figure.
OTHERS_LIMIT = 0.10

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_name():
    """Returns the CPU model from /proc/cpuinfo, or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores():
    """Returns the number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def limit_threads(backend, threads):
    """Makes the backend (and PyTorch, for the plain reference) run ops on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def thread_counts(backend):
    """Returns the threads per op of the frameworks in use, and of this process, by name.

    TensorFlow's 0 means its default, one per core. JAX (XLA) has no such setting
    to read: it runs one thread per core unless `--threads 1` turned that off.
    """
    counts = {}
    if "torch" in sys.modules:  # the backend, or the plain-PyTorch reference
        torch = sys.modules["torch"]
        counts = {"torch intra-op": torch.get_num_threads(), "torch inter-op": torch.get_num_interop_threads()}
    if backend == "tensorflow":
        import tensorflow as tf

        counts["tf intra-op"] = tf.config.threading.get_intra_op_parallelism_threads() or cores()
        counts["tf inter-op"] = tf.config.threading.get_inter_op_parallelism_threads() or cores()
    try:
        status = Path("/proc/self/status").read_text()
        counts["process"] = int(next(l.split()[1] for l in status.splitlines() if l.startswith("Threads:")))
    except (OSError, StopIteration):
        pass
    return counts


def choose_device(device):
    """Hides the GPUs for `--device cpu`; call before any framework is imported."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def device_name(backend):
    """Returns the device the tables run on, in words: the GPU's name, or the CPU's."""
    name = None
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            name = f"GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            name = f"GPU {details.get('device_name', gpus[0].name)}"
    else:
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            name = f"GPU {gpus[0].device_kind}"
    return name or f"CPU {cpu_name()} (no GPU found)"


def _busy_ticks():
    """Returns the clock ticks all cores have spent busy since boot (steal included), or None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    return sum(fields[:8]) - fields[3] - fields[4]


def _own_seconds():
    """Returns the CPU seconds of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _processes():
    """Returns `{pid: (name, CPU ticks)}` of the other processes, this one's children left out."""
    me, found = os.getpid(), {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it ended
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        pid, parent = int(stat.parent.name), int(rest[1])
        if me not in (pid, parent):
            found[pid] = (name, int(rest[11]) + int(rest[12]))
    return found


class Watch:
    """What other processes did from its start to each `check()`: their CPU, the load, the threads."""

    def __init__(self):
        self.started = time.perf_counter()
        self.busy = _busy_ticks()
        self.own = _own_seconds()
        self.processes = _processes() if self.busy is not None else {}

    def check(self, threads=None):
        """Returns the record of the stretch since the start: `busy` and the `reasons` why.

        `threads`: `thread_counts()`, checked against the cores.
        """
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        load = os.getloadavg()
        record = {"seconds": round(elapsed, 2), "load": [round(v, 2) for v in load], "cores": cores(),
                  "threads": threads or {}, "reasons": []}
        busy = _busy_ticks()
        if busy is None or self.busy is None:
            record["reasons"].append("no /proc/stat: could not tell whether the machine was idle")
        else:
            others = max((busy - self.busy) / _TICK - (_own_seconds() - self.own), 0.0) / elapsed
            record["others"] = round(others, 3)
            record["top"] = self._top(elapsed)
            if others > OTHERS_LIMIT:
                names = ", ".join(f"{n} {pid} {share:.0%}" for pid, n, share in record["top"]) or "short-lived"
                record["reasons"].append(f"other processes used {others:.0%} of a core ({names})")
        if load[0] > cores() + 0.5:
            record["reasons"].append(f"load average {load[0]:.1f} on {cores()} cores")
        for name, count in (threads or {}).items():
            if name != "process" and count > cores():
                record["reasons"].append(f"{name} threads {count} on {cores()} cores")
        record["busy"] = bool(record["reasons"])
        return record

    def _top(self, elapsed):
        """Returns `(pid, name, share of a core)` of the 3 busiest other processes since the start."""
        now = _processes()
        used = [(pid, name, (ticks - self.processes[pid][1]) / _TICK / elapsed)
                for pid, (name, ticks) in now.items() if pid in self.processes]
        return [(pid, name, round(share, 3)) for pid, name, share in sorted(used, key=lambda u: -u[2])[:3]
                if share >= 0.01]


def idle_before(seconds=1.0):
    """Returns `Watch.check()` over `seconds` of this process sleeping: what the others do without us."""
    watch = Watch()
    time.sleep(seconds)
    return watch.check()


def verdict(label, record):
    """Returns the line `bench.py` prints for `record`: idle, or a warning naming why not."""
    others = f"others {record['others']:.0%} of a core, " if "others" in record else ""
    if not record["busy"]:
        return f"idle        {label}: {others}load {record['load'][0]:.1f} on {record['cores']} cores"
    return (f"WARNING     busy {label}: {'; '.join(record['reasons'])}. "
            "These figures cannot be trusted: run again on an idle machine")
