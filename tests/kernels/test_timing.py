"""kernels.timing on a CPU: the errors without CUDA (before ``fn`` ever runs), the median/launch arithmetic of both
timers against a fake CUDA runtime, and ``versions()`` with and without ``nvidia-smi``. The real timers run on a
GPU only (marker ``gpu``)."""

from __future__ import annotations

import contextlib
import subprocess
import types

import pytest
import torch
import triton

from kernels import timing


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_require_cuda_names_the_module(no_cuda) -> None:
    with pytest.raises(RuntimeError) as exc:
        timing._require_cuda()
    assert str(exc.value) == "kernels.timing: CUDA is not available (timing runs on a GPU only)"


@pytest.mark.parametrize("timer", [timing.time_cuda_graph, timing.time_cuda_events])
def test_timers_refuse_without_cuda_before_calling_fn(no_cuda, timer) -> None:
    calls = []
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        timer(lambda: calls.append(1))
    assert calls == []


class _FakeCuda:
    """Just enough of torch.cuda for the timers: events whose elapsed times (ms) come from a list, a graph that
    records how often it is replayed, streams and synchronize as no-ops, and a log of what happened in order."""

    def __init__(self, elapsed_ms: list[float]) -> None:
        self.elapsed = list(elapsed_ms)
        self.log: list[str] = []
        self.capturing = False
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing

            def record(self) -> None:
                fake.log.append("record")

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, other) -> float:
                return fake.elapsed.pop(0)

        class CUDAGraph:
            def replay(self) -> None:
                fake.log.append("replay")

        @contextlib.contextmanager
        def graph(g):
            fake.capturing = True
            fake.log.append("capture")
            yield
            fake.capturing = False
            fake.log.append("captured")

        class _Stream:
            def wait_stream(self, other) -> None:
                pass

        self.Event = Event
        self.CUDAGraph = CUDAGraph
        self.graph = graph
        self.Stream = _Stream
        self.current_stream = _Stream
        self.stream = lambda s: contextlib.nullcontext()
        self.synchronize = lambda: None


def _fake_torch(monkeypatch, elapsed_ms):
    cuda = _FakeCuda(elapsed_ms)
    monkeypatch.setattr(timing, "_require_cuda", lambda: types.SimpleNamespace(cuda=cuda))
    return cuda


def test_graph_timer_median_per_launch(monkeypatch) -> None:
    cuda = _fake_torch(monkeypatch, [0.030, 0.010, 0.050, 0.020, 0.040])  # ms per replay of 10 launches
    phases = []

    def fn() -> None:
        phases.append("capture" if cuda.capturing else "eager")

    us = timing.time_cuda_graph(fn, warmup=3, repeats=5, launches=10)
    # median replay 0.030 ms = 30 us over 10 launches -> 3 us per call
    assert us == pytest.approx(3.0)
    assert phases == ["eager"] * 3 + ["capture"] * 10
    # one upload replay before the 5 timed ones, each between two event records
    assert cuda.log.count("replay") == 6
    assert cuda.log[cuda.log.index("captured") + 1] == "replay"
    assert cuda.log[-3:] == ["record", "replay", "record"]
    assert cuda.elapsed == []


def test_graph_timer_warms_up_at_least_once_and_even_repeats_average(monkeypatch) -> None:
    _fake_torch(monkeypatch, [0.004, 0.008, 0.002, 0.006])
    calls = []
    us = timing.time_cuda_graph(lambda: calls.append(1), warmup=0, repeats=4, launches=2)
    # per-call us: 2, 4, 1, 3 -> median of an even count is the mean of the middle two, 2.5
    assert us == pytest.approx(2.5)
    assert len(calls) == 1 + 2


def test_event_timer_median_of_eager_calls(monkeypatch) -> None:
    cuda = _fake_torch(monkeypatch, [0.5, 0.1, 0.3])
    calls = []
    us = timing.time_cuda_events(lambda: calls.append(1), warmup=2, repeats=3)
    assert us == pytest.approx(300.0)  # median 0.3 ms, one call per sample: no division
    assert len(calls) == 2 + 3
    assert "replay" not in cuda.log and cuda.log.count("record") == 6
    assert isinstance(us, float)


def test_event_timer_warmup_zero_still_runs_fn_once_before_timing(monkeypatch) -> None:
    _fake_torch(monkeypatch, [1.0])
    calls = []
    assert timing.time_cuda_events(lambda: calls.append(1), warmup=0, repeats=1) == pytest.approx(1000.0)
    assert len(calls) == 2


def _fake_run(result=None, exc=None, seen=None):
    def run(cmd, **kw):
        if seen is not None:
            seen.append((cmd, kw))
        if exc is not None:
            raise exc
        return subprocess.CompletedProcess(cmd, 0, stdout=result, stderr="")

    return run


def test_versions_reads_the_first_driver_line(monkeypatch) -> None:
    seen: list = []
    monkeypatch.setattr(subprocess, "run", _fake_run("550.54.15\n550.54.15\n", seen=seen))
    v = timing.versions()
    assert v == {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": str(torch.version.cuda),
        "driver": "550.54.15",
    }
    ((cmd, kw),) = seen
    assert cmd == ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    assert kw["timeout"] == 20 and kw["check"] is False and kw["capture_output"] is True


@pytest.mark.parametrize(
    "fake",
    [
        _fake_run(exc=FileNotFoundError("nvidia-smi")),
        _fake_run(exc=subprocess.TimeoutExpired("nvidia-smi", 20)),
        _fake_run(exc=PermissionError("denied")),
        _fake_run(""),
    ],
    ids=["missing", "timeout", "not-executable", "no-output"],
)
def test_versions_driver_unknown_never_an_error(monkeypatch, fake) -> None:
    monkeypatch.setattr(subprocess, "run", fake)
    v = timing.versions()
    assert v["driver"] == "unknown"
    assert v["torch"] == torch.__version__ and set(v) == {"torch", "triton", "cuda", "driver"}
    assert all(isinstance(x, str) for x in v.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_timers_on_a_gpu() -> None:
    x = torch.randn(1 << 20, device="cuda")
    calls = []

    def fn() -> None:
        calls.append(1)
        x.mul_(1.0)

    us = timing.time_cuda_graph(fn, warmup=2, repeats=5, launches=4)
    assert 0 < us < 1e5 and len(calls) == 2 + 4
    ev = timing.time_cuda_events(fn, warmup=1, repeats=3)
    assert 0 < ev < 1e6
