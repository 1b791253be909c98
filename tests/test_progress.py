"""Progress off a terminal: plain lines at an interval, the compiling first step named with
its duration and kept out of the rate and ETA (hand-computed with a fake clock)."""
import io

from pathreasoner_jax.core import progress as P


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_plain_lines_compile_step_and_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(P.time, "monotonic", clock)
    out = io.StringIO()  # not a terminal: no bar
    bar = P.Progress("sft", total=12, initial=2, every_s=10, unit="step", stream=out)
    assert bar.bar is None
    bar.compiling("the train step")
    clock.t += 139.0  # compilation
    bar.compiled()
    bar.update(1, restart_rate=True, loss="2.0000")
    for _ in range(4):  # 4 steps of 0.5 s: 2 steps/s from here on
        clock.t += 0.5
        bar.update(1, loss="1.5000")
    lines = out.getvalue().splitlines()
    assert lines[0] == "sft: compiling the train step (first step) …"
    assert lines[1] == "sft: first step (compilation included) took 139.0s"
    assert len(lines) == 2  # 2 s since the last line: none yet
    clock.t += 9.0  # quiet time; the next update passes the 10 s interval
    bar.update(1, loss="1.2500")
    # 8 of 12 done; 5 steps in 11 s since the compiled step → 0.4545 steps/s; 4 left → 8.8 s
    assert out.getvalue().splitlines()[2] == "sft: 8/12 (67%) · 0.455 step/s · ETA 0:00:08 · loss 1.2500"
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("sft: 8/12 (67%)")


def test_disabled_prints_nothing():
    out = io.StringIO()
    bar = P.Progress("grpo", total=3, enabled=False, stream=out)
    bar.compiling()
    bar.compiled()
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
