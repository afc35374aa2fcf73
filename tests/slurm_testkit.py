"""A real single-node SLURM cluster for the tests, from Debian's ``slurm-wlm`` and ``munge``.

:class:`SlurmCluster` writes a munge key and a ``slurm.conf`` into a temporary directory and
starts ``munged``, ``slurmctld`` and ``slurmd`` on this machine (127.0.0.1, free ports), all
in the foreground as child processes of the test, and stops them afterwards. The clients
(``sbatch``, ``squeue``, ``scancel``, ``scontrol``) find it through ``SLURM_CONF``
(:attr:`SlurmCluster.env`). Nothing outside the directory is touched: no system service, no
file in /etc.

The node offers 16 CPUs and 4 "GPUs" (whatever this machine has: ``SlurmdParameters=
config_overrides``; the GPU files are links to /dev/null), so that a job script asking for a
GPU and several CPUs per task runs unchanged, three tasks at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
PACKAGES = "slurm-wlm munge"
KILL_WAIT = 10  # seconds between a cancelled job's SIGTERM and its SIGKILL


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def why_unavailable() -> str | None:
    """Why this machine cannot run the cluster (``None``: it can)."""
    if not sys.platform.startswith("linux"):
        return f"a SLURM cluster needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return (
            "starting a SLURM cluster needs root (slurmd runs each job as its user); "
            "run the tests as root, as CI does"
        )
    missing = [p for p in DAEMONS + CLIENTS if _find(p) is None]
    if missing:
        return (
            f"Debian's {PACKAGES} are not installed (no {', '.join(missing)}): "
            f"apt-get install -y --no-install-recommends {PACKAGES} (.ci/run does)"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """One controller and one node on this machine, configured in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}
        for name in list(self.env):  # not inside another SLURM job's settings
            if name.startswith(("SLURM_", "SBATCH_", "SQUEUE_")) and name != "SLURM_CONF":
                del self.env[name]

    # -- start and stop -------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        folder = self.folder
        for sub in ("munge", "state", "spool", "log"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "munge").chmod(0o755)  # the socket must be reachable, the key is not
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = folder / "munge" / "munge.socket"
        self._spawn(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={socket_path}",
            f"--pid-file={folder / 'munge' / 'munged.pid'}",
            f"--log-file={folder / 'log' / 'munged.log'}",
            f"--seed-file={folder / 'munge' / 'munged.seed'}",
        )
        self._wait(socket_path.exists, timeout, "munged to open its socket")
        gpus = []
        for i in range(4):
            gpu = folder / f"gpu{i}"
            gpu.symlink_to("/dev/null")  # slurmd wants a character device per GPU
            gpus.append(gpu)
        (folder / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={folder}/gpu[0-3]\n")
        (folder / "slurm.conf").write_text(self._config(socket_path))
        self._spawn("slurmctld", "-D", "-c")
        self._spawn("slurmd", "-D")
        self._wait(lambda: self.node_state() == "idle", timeout, "the node to be idle")

    def _config(self, munge_socket: Path) -> str:
        f = self.folder
        self.ports = [_free_port()]
        while len(self.ports) < 2:
            port = _free_port()
            if port not in self.ports:
                self.ports.append(port)
        return "\n".join(
            [
                "ClusterName=meitest",
                f"SlurmctldHost={self.node}(127.0.0.1)",
                f"SlurmctldPort={self.ports[0]}",
                f"SlurmdPort={self.ports[1]}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={f / 'state'}",
                f"SlurmdSpoolDir={f / 'spool'}",
                f"SlurmctldPidFile={f / 'slurmctld.pid'}",
                f"SlurmdPidFile={f / 'slurmd.pid'}",
                f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "MpiDefault=none",
                "ReturnToService=2",
                f"KillWait={KILL_WAIT}",
                "SlurmdParameters=config_overrides",
                "GresTypes=gpu",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:4 "
                "State=UNKNOWN",
                f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _spawn(self, daemon: str, *args: str) -> None:
        log = open(self.folder / "log" / f"{daemon}.out", "w")  # noqa: SIM115 (kept open)
        self.processes[daemon] = subprocess.Popen(
            [_find(daemon) or daemon, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode} while waiting for {what}:\n"
                        + self.logs()
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out after {timeout} s waiting for {what}:\n" + self.logs()
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, wait for them to end, then stop the daemons."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 3 * KILL_WAIT + 10
            while self.run("squeue", "--noheader", check=False).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self, lines: int = 20) -> str:
        """The last lines of every daemon's log."""
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- clients --------------------------------------------------------------------------
    def run(self, *command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        done = subprocess.run(
            command,
            env=kwargs.pop("env", self.env),
            capture_output=True,
            text=True,
            timeout=60,
            **kwargs,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}\n{done.stderr}")
        return done

    def node_state(self) -> str:
        done = self.run("sinfo", "--noheader", "--format", "%t", check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields of one job (or array task, ``ID_TASK``)."""
        text = self.run("scontrol", "--oneliner", "show", "job", job_id).stdout
        fields = {}
        for word in text.split():
            name, _, value = word.partition("=")
            fields.setdefault(name, value)
        return fields

    def queued(self, job_id: str) -> list[str]:
        """The array tasks of ``job_id`` still queued or running, as ``ID_TASK`` states."""
        done = self.run(
            "squeue", "--noheader", "--array", "--jobs", job_id, "--format", "%i %T", check=False
        )
        return [line for line in done.stdout.splitlines() if line.strip()]
