"""Two processes × 4 CPU devices, started through our multi-host start-up, give the loss
of one process with 8 devices."""
import os
import re
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHREASONER_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    return env


def _loss(out: str) -> float:
    m = re.search(r"LOSS (\S+)", out)
    assert m, out
    return float(m.group(1))


def test_two_processes_match_one_process():
    single = subprocess.run([sys.executable, WORKER], env=_env(8), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, WORKER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(4, PATHREASONER_COORDINATOR=f"127.0.0.1:{port}",
                                       PATHREASONER_NUM_PROCESSES="2", PATHREASONER_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "devices 8" in out
        outs.append(out)
    ref = _loss(single.stdout)
    for out in outs:
        assert abs(_loss(out) - ref) < 1e-5 * max(1.0, abs(ref)), (out, ref)
