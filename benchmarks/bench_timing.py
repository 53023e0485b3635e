"""How ``bench_models.py`` times a case: warm-up, peak memory, then timed blocks (interleaved on the CPU)."""

from __future__ import annotations

import argparse
import ctypes
import gc
import time
from collections.abc import Callable

import torch
from bench_cases import Case, Plan, build_step, describe, failure, uses_cuda_graphs


def minor_faults() -> int | None:
    """This process's minor page faults so far (None where the platform does not count them)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_block(step: Callable[[], None], iters: int, device: str, clock: Callable[[], float]) -> float:
    """Seconds per iteration over one block of ``iters`` back-to-back iterations."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()  # the block's only host sync
        return start.elapsed_time(end) / 1e3 / iters
    begin = clock()
    for _ in range(iters):
        step()
    return (clock() - begin) / iters



def prepare(case: Case, args: argparse.Namespace, plan: Plan) -> None:
    """Build and warm up (compiling, autotuning, capturing graphs); record the peak memory of one more step."""
    cuda = case.device == "cuda"
    try:
        if cuda:
            gc.collect()  # what earlier cases left behind must not be freed inside this one's count
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            case.mem_base = torch.cuda.memory_allocated()
        else:
            gc.collect()
            case.mem_base = heap_allocated() or 0
        begin = time.perf_counter()
        case.step = build_step(case, args)
        for _ in range(plan.warmup):
            case.step()
        if cuda:
            torch.cuda.synchronize()
        case.warmup_s = time.perf_counter() - begin
        if cuda:  # one more step from a clean peak: compile-time autotuning buffers do not count
            setup_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            case.step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            # A CUDA graph's activations live in its private pool, allocated while it was captured (in
            # the warm-up) and free, not "allocated", between replays: a replay's own peak misses them.
            if uses_cuda_graphs(case.mode):
                peak = max(peak, setup_peak)
            case.peak_mib = (peak - case.mem_base) / 2**20
        else:
            held = heap_allocated()
            step_peak = step_peak_bytes(case.step)
            if held is not None and step_peak is not None:
                case.peak_mib = (held - case.mem_base + step_peak) / 2**20
    except Exception as error:  # a failing implementation or compile mode is recorded, not fatal
        case.status, case.step = failure(error), None
        print(f"  {case.label}: {case.status}", flush=True)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def heap_allocated() -> int | None:
    """Bytes malloc has handed out and not got back (glibc's ``mallinfo2``: heap plus mmapped blocks).

    PyTorch's CPU tensors come from malloc, so the difference across building a case is what the case
    holds: weights, optimizer state, inputs, caches (compiled code adds a little). None off glibc."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc older than 2.33
        return None
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def step_peak_bytes(step: Callable[[], None]) -> int | None:
    """The most bytes one call of ``step`` has allocated at any moment above what it started with.

    Read from the profiler's memory events (every CPU tensor allocation and free, in order)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = sorted(
            (event.start_ns(), event.nbytes())
            for event in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
            if event.name() == "[memory]" and event.device_type() == torch._C._autograd.DeviceType.CPU
        )
    except Exception:  # the profiler's raw events are not public API: the column is optional
        return None
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def release(cases: list[Case]) -> None:
    for case in cases:
        case.step = None
    gc.collect()
    if any(case.mode.compile_mode for case in cases):
        torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_group(cases: list[Case], args: argparse.Namespace, plan: Plan, deadline: float) -> None:
    """Interleave the implementations block by block on the CPU; run them one after another on CUDA.

    On a shared CPU, interleaving makes the ours/timm ratio robust to load that comes and goes. A
    GPU is not shared, and one implementation at a time keeps CUDA-graph memory pools apart.
    """
    interleave = cases[0].device == "cpu"
    clock = time.process_time if args.cpu_clock == "process" else time.perf_counter
    groups = [cases] if interleave else [[case] for case in cases]
    for group in groups:
        for case in group:
            if time.perf_counter() > deadline:
                case.status = "skipped: --time-budget reached"
                continue
            prepare(case, args, plan)
        try:
            for repeat in range(plan.repeats):
                # Rotate the order each round so no implementation always runs right after another.
                for case in group[repeat % len(group) :] + group[: repeat % len(group)]:
                    if case.step is None:
                        continue
                    try:
                        faults = minor_faults() if interleave else None
                        case.samples_s.append(time_block(case.step, plan.iters, case.device, clock))
                        if faults is not None:
                            # Fresh activation memory the kernel maps in on first touch: a CPU cost
                            # that depends on the allocator as much as on the model (see NOTES.md).
                            case.faults.append((minor_faults() - faults) / plan.iters)
                    except Exception as error:
                        case.status, case.step = failure(error), None
        finally:
            release(group)
        for case in group:
            if case.samples_s:
                print(f"  {case.label}: {describe(case)}", flush=True)
