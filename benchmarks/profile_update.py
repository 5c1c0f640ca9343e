"""Where one training update's time goes: torch-profiler operator totals per update, for K = 1 and K = 2.

    python benchmarks/profile_update.py                                  # FACMAC HalfCheetah 2x3, K = 1 and 2
    python benchmarks/profile_update.py --setting maddpg_vmas_reference --ks 1

Each K trains a few frames through ``kpg_lightning.train.train`` (the settings of ``k_overhead.py``, or the
``throughput.py`` reference), then profiles ``--updates`` further updates (critic step, K-level actor step,
targets) on batches sampled from that run's replay buffer, after ``--warmup`` unprofiled ones. Prints and writes
(``--out``/``profile_<setting>.md``) the milliseconds per update of each operator and input shape, the share of
the matrix products (``addmm``/``mm``/``bmm``: the floating-point work) and the wall-clock per update without the
profiler.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from k_overhead import QUIET, SETTINGS  # noqa: E402
from throughput import REFERENCE  # noqa: E402

PROFILED = {**SETTINGS, "maddpg_vmas_reference": [*REFERENCE, "checkpoint.every_frames=100000000"]}
FRAMES = {"facmac_halfcheetah": 300, "maddpg_vmas": 3000, "maddpg_vmas_reference": 6000}
MATMULS = ("aten::addmm", "aten::mm", "aten::bmm")


class ProfileUpdates(Callback):
    """At the end of training, times and profiles updates on batches from the run's replay buffer."""

    def __init__(self, updates: int, warmup: int):
        self.updates, self.warmup = updates, warmup
        self.result: dict[str, Any] = {}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        batches = [pl_module.experience.replay.sample() for _ in range(self.warmup + 2 * self.updates)]
        for td in batches[: self.warmup]:
            pl_module.update(td)
        seconds = []
        for td in batches[self.warmup : self.warmup + self.updates]:
            start = time.perf_counter()
            pl_module.update(td)
            seconds.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for td in batches[self.warmup + self.updates :]:
                pl_module.update(td)
        ops: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        for event in prof.key_averages(group_by_input_shape=True):
            ops[(event.key, str(event.input_shapes))][0] += event.self_cpu_time_total / 1e3 / self.updates
            ops[(event.key, str(event.input_shapes))][1] += event.count / self.updates
        self.result = {
            "ms_per_update": 1e3 * statistics.median(seconds),
            "ops": dict(ops),
            "threads": torch.get_num_threads(),
        }


def profile_k(setting: str, k: int, updates: int, warmup: int, frames: int, workdir: Path) -> dict[str, Any]:
    import kpg_lightning.train as train_module

    callback = ProfileUpdates(updates, warmup)
    trainer_cls = train_module.Trainer

    def trainer_with_profiler(*args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), callback]
        return trainer_cls(*args, **kwargs)

    train_module.Trainer = trainer_with_profiler  # the run's own Trainer, plus the profiling callback
    try:
        train_module.train(
            [*PROFILED[setting], f"kpg.k={k}", f"max_frames={frames}", *QUIET], workdir / f"{setting}_k{k}"
        )
    finally:
        train_module.Trainer = trainer_cls
    return callback.result


def report(setting: str, results: dict[int, dict[str, Any]], rows: int) -> str:
    lines = [f"# Profile of one update: {setting}", ""]
    for k, r in results.items():
        ops = r["ops"]
        total = sum(ms for ms, _ in ops.values())
        matmul = sum(ms for (name, _), (ms, _) in ops.items() if name in MATMULS)
        by_name: dict[str, float] = defaultdict(float)
        for (name, _), (ms, _) in ops.items():
            by_name[name] += ms
        top_names = sorted(by_name.items(), key=lambda item: -item[1])[:6]
        lines += [
            f"## K = {k}",
            "",
            f"{r['ms_per_update']:.2f} ms per update without the profiler ({r['threads']} torch threads); "
            f"under it {total:.2f} ms of operator self time, {100 * matmul / total:.0f}% of it matrix "
            "products. Largest operators: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in top_names) + ".",
            "",
            "| operator | input shapes | ms / update | calls / update |",
            "|---|---|---|---|",
        ]
        for (name, shapes), (ms, calls) in sorted(ops.items(), key=lambda item: -item[1][0])[:rows]:
            lines.append(f"| {name} | `{shapes}` | {ms:.3f} | {calls:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="facmac_halfcheetah", choices=list(PROFILED))
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rows", type=int, default=15, help="operator rows printed per K")
    parser.add_argument(
        "--frames", type=int, default=None, help="frames trained before profiling (default: per setting)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        frames = args.frames or FRAMES[args.setting]
        results = {k: profile_k(args.setting, k, args.updates, args.warmup, frames, Path(tmp)) for k in args.ks}
    markdown = report(args.setting, results, args.rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_{args.setting}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
