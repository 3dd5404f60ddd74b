"""Timing helpers shared by the benchmark tools: interleaved medians, per-part times, peak
memory, autocast precision."""
import os
import random
import statistics
import threading
import time

import torch


def _sync():
    """Wait for queued CUDA work, so that a time covers what was launched inside it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(fn, device):
    """Peak memory (MiB) that one call of ``fn`` adds on ``device``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not os.path.exists("/proc/self/statm"):
        return float("nan")
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with torch.inference_mode():
        fn()
    done.set()
    thread.join()
    return (max(peak[0], _rss_bytes()) - base) / 2**20


def peak_allocated_mb(fn, device):
    """Peak memory (MiB) of the tensors PyTorch allocates during one call of ``fn``, above what
    was allocated when it started (its own grad mode: the caller chooses).

    CUDA: ``torch.cuda.max_memory_allocated``. Elsewhere: the allocation and free events of
    PyTorch's CPU allocator that ``torch.profiler`` records with ``profile_memory``, summed in
    time order -- every tensor (activations kept for the backward pass, gradients, optimizer
    states), none of the interpreter's or libraries' own memory; NaN where the profiler gives
    no events."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # another profiler layout
        return float("nan")
    if not events:
        return float("nan")
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def interleaved_medians(fns, reps, device, seed=0, warmup=1):
    """name -> median ms over ``reps`` rounds; each round runs every fn once in random order."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {name: [] for name in fns}
    order = random.Random(seed)
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):  # torch.compile traces and compiles in its first calls
                fn()
        for _ in range(reps):
            names = list(fns)
            order.shuffle(names)
            for name in names:
                sync()
                start = time.perf_counter()
                fns[name]()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


class PartTimer:
    """Wall time of named submodules (forward hooks) and methods of one model pass."""

    def __init__(self, model, modules, methods):
        self.times, self._start, self._handles, self._restore = {}, {}, [], []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(
                lambda m, a, name=name: self._begin(name)))
            self._handles.append(module.register_forward_hook(
                lambda m, a, o, name=name: self._end(name)))
        for name, attr in methods.items():
            original = getattr(model, attr)

            def timed(*args, _f=original, _name=name, **kwargs):
                self._begin(_name)
                out = _f(*args, **kwargs)
                self._end(_name)
                return out

            setattr(model, attr, timed)
            self._restore.append((model, attr))

    def _begin(self, name):
        _sync()
        self._start[name] = time.perf_counter()

    def _end(self, name):
        _sync()
        self.times[name] = self.times.get(name, 0.0) + 1000 * (time.perf_counter()
                                                                 - self._start[name])

    def close(self):
        for h in self._handles:
            h.remove()
        for obj, attr in self._restore:
            delattr(obj, attr)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def with_precision(fn, device, precision):
    """``fn`` run under ``torch.autocast`` with the precision's dtype (fp32: ``fn`` itself)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return fn

    def run():
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
            return fn()
    return run
