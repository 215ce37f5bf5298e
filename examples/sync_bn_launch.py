"""The launcher and the worker's plumbing that the three `sync_bn_*.py` examples share.

Each example script is both the launcher and the worker. Run without `--rank`, it
picks free ports on 127.0.0.1, starts itself twice (`--rank 0` and `--rank 1`)
with the engine's own environment, waits for both under a time limit, kills both
if either fails or the limit passes, and prints what the workers found. Run with
`--rank`, it is one worker: it parses the same options, records the warnings that
matter and writes its result as JSON. What the workers check is in
`sync_bn_common.py`. Nothing here imports an engine, so the test suite can import
this file under any Keras backend.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import sync_bn_common as common

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count):
    """Returns `count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(backend, extra=None):
    """Returns the environment of a worker: this one, the Keras backend, quiet TensorFlow, CPU only."""
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
        # Two workers share the cores: one thread each keeps them from fighting.
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.update(extra or {})
    return env


def launch(
    script, backend, args=(), per_rank_env=None, timeout=240, world_size=common.WORLD_SIZE
):
    """Starts `script --rank r` for every rank, waits for all, and returns their JSON results.

    Args:
        script: Path of the example script (the worker).
        backend: The Keras backend of the workers (`KERAS_BACKEND`).
        args: Extra command-line arguments for every worker.
        per_rank_env: A function of the rank returning extra environment
            variables for that worker (e.g. its `TF_CONFIG`). Defaults to none.
        timeout: Seconds for the whole run, after which every worker still
            alive is killed. Defaults to 240.
        world_size: The number of workers. Defaults to 2.

    Returns:
        The list of the workers' results, in rank order (what each wrote as JSON).

    Raises:
        RuntimeError: if a worker exits with an error or the time runs out; the
            message holds the end of every worker's log.
    """
    with tempfile.TemporaryDirectory(prefix="sync_bn_") as folder, ExitStack() as logs:
        folder = Path(folder)
        processes = []
        try:
            for rank in range(world_size):
                log = logs.enter_context(open(folder / f"rank{rank}.log", "w"))
                command = [
                    sys.executable,
                    str(script),
                    "--rank",
                    str(rank),
                    "--world-size",
                    str(world_size),
                    "--result",
                    str(folder / f"rank{rank}.json"),
                    *args,
                ]
                extra = per_rank_env(rank) if per_rank_env else None
                processes.append(
                    subprocess.Popen(
                        command,
                        env=worker_env(backend, extra),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    )
                )
            failed = _wait(processes, timeout)
            if failed:
                raise RuntimeError(
                    f"{Path(script).name} on {backend}: {failed}\n" + _tails(folder)
                )
            return [
                json.loads((folder / f"rank{rank}.json").read_text())
                for rank in range(world_size)
            ]
        finally:
            # Only the processes started here, each by its own handle.
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)


def _wait(processes, timeout):
    """Waits for every process; returns why the run failed, or None when all exited with 0.

    Stops waiting as soon as one process fails (the others would wait for it
    forever in their next collective) or when `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in processes]
        if any(c not in (None, 0) for c in codes):
            return f"a worker failed (exit codes {codes})"
        if all(c == 0 for c in codes):
            return None
        if time.monotonic() > deadline:
            return f"timed out after {timeout} s (exit codes {codes})"
        time.sleep(0.2)


def _tails(folder, chars=3000):
    """Returns the end of every worker log in `folder`, for an error message."""
    return "\n".join(
        f"--- {log.name}:\n{log.read_text(errors='replace')[-chars:]}"
        for log in sorted(Path(folder).glob("rank*.log"))
    )


def parse_worker_args(description, argv=None):
    """Parses the options every example shares; without `--rank` the script is the launcher."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this worker's rank (set by the launcher)",
    )
    parser.add_argument("--world-size", type=int, default=common.WORLD_SIZE)
    parser.add_argument(
        "--result", default=None, help="where the worker writes its JSON result"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="the coordinator's port on --host"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the coordinator's (rank 0's) address"
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="time training steps of deep_mnist_model with and without synchronization",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=240,
        help="launcher: seconds before the workers are killed",
    )
    return parser.parse_args(argv)


def run_launcher(script, backend, args, per_rank_env=None, extra_args=()):
    """The launcher's side of an example: runs the workers, prints and returns their summary."""
    forwarded = ["--benchmark"] if args.benchmark else []
    results = launch(
        script,
        backend,
        args=[*forwarded, *extra_args],
        per_rank_env=per_rank_env,
        timeout=args.timeout,
        world_size=args.world_size,
    )
    summary = {"backend": backend, **common.summarize(results)}
    print(json.dumps(summary, indent=2))
    return summary


@contextmanager
def warnings_of_interest(found):
    """Records into `found` every warning raised by keras-bn or about a collective.

    The test suite treats warnings as errors, but a worker runs outside pytest:
    this is how a deprecated all-reduce (torch 2.13 warns on
    `torch.distributed.nn.functional.all_reduce`) still fails the test.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                text = f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
                if "keras_bn" in str(w.filename) or "all_reduce" in str(w.message):
                    found.append(text)


def write_result(path, result):
    """Writes the worker's result as JSON (to `path`, or stdout when `path` is None)."""
    text = json.dumps(result)
    if path:
        Path(path).write_text(text)
    print(text, flush=True)
