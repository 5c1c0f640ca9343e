"""GPU end to end in one command: every family runs on the device, VMAS throughput by env count, the K overhead.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu              # on a CUDA machine, under 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick --parts smoke,vmas   # the CPU smoke test, tiny sizes
    python benchmarks/gpu_check.py --parts long_run,k_overhead --compile none default cudagraphs --budget-s 540 \
        --out benchmarks/results/gpu/compiled                                 # issue 16: the compiled update

Parts (``--parts``, default the first three, run in the order given; each is skipped, and recorded as skipped,
once ``--budget-s`` is spent):

- ``smoke``: a tiny run of each family (MADDPG/FACMAC on VMAS, FACMAC/COMIX on MaMuJoCo HalfCheetah 2x3,
  MAPPO/IPPO/QMIX/discrete FACMAC on SMAX 3m), ``--jobs`` side by side: ok or failed with its error line, wall
  time, frames and updates.
- ``vmas``: K = 1 and K = 2 MADDPG on VMAS ``balance`` with ``throughput.py``'s reference schedule (100 updates of
  128 per iteration) at 60, 600, 4096 and 16384 environments (100 steps each per iteration; 3 iterations, 2 from
  4096 envs): collection frames/s, ms per update, whole-iteration frames/s (medians after the first iteration, from
  the run's ``metrics.csv``),
  the training process's peak GPU memory (``gpu_memory.py``) and ``nvidia-smi`` utilisation sampled during the
  run; plus the 60-env configuration on the CPU, the baseline of the 20x goal.
- ``k_overhead``: ``k_overhead.py``'s table (K = 1, 2, 3, 5) on the device for FACMAC HalfCheetah 2x3 and MADDPG
  on VMAS, eager (``compile=none``); with ``--compile``, also ``default`` (``torch.compile``) and ``cudagraphs`` at
  K = 1, 2, 5 (the paper's Table 2), interleaved by K, each mode's row next to eager's ("vs eager").
- ``long_run``: K2-FACMAC HalfCheetah 2x3 (the paper's configuration) for ``--long-frames`` steps (50k) with
  ``compile=cudagraphs``: median time per training step and per update, and the paper's 2M steps extrapolated.

Every run is its own ``python -m kpg_lightning.train`` subprocess with a timeout; a failing run is recorded with
its one-line error and the rest still runs. ``gpu_check.json`` and ``gpu_check.md`` are rewritten in ``--out``
after every run, so a timeout still leaves them. ``env.device``/``buffer.device`` are passed only where the
composed configuration accepts them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import k_overhead  # noqa: E402
from gpu_machine import UtilSampler, machine  # noqa: E402
from gpu_report import goals, report  # noqa: E402
from throughput import QUIET, REFERENCE  # noqa: E402

TINY = ["model.actor_hidden=[32]", "model.critic_hidden=[32,32]", "buffer.learning_starts=0"]
VMAS_TINY = ["env.num_envs=8", "collector.frames_per_batch=160", "max_frames=320", "buffer.batch_size=16"]
MUJOCO_TINY = ["env.max_steps=50", "collector.init_random_frames=0", "max_frames=40", "buffer.batch_size=16"]
SMAX_TINY = [
    "env.map_name=3m",
    "env.num_envs=4",
    "collector.frames_per_batch=200",
    "max_frames=400",
    "model.gru_hidden=16",
    "buffer.batch_size=4",  # episodes, for the recurrent off-policy families
]
FAMILIES: dict[str, list[str]] = {
    "maddpg_vmas": ["+experiment=k2_maddpg_vmas_balance", *VMAS_TINY],
    "facmac_vmas": ["algorithm=facmac", "env=vmas", "kpg.k=2", *VMAS_TINY],
    "facmac_halfcheetah": ["+experiment=k2_facmac_halfcheetah", *MUJOCO_TINY],
    "comix_halfcheetah": ["+experiment=comix_halfcheetah", *MUJOCO_TINY],  # value-based: K = 1 only
    "mappo_smax": ["+experiment=k2_mappo_smax_3m", *SMAX_TINY],
    "ippo_smax": ["+experiment=ippo_smax_3m", "kpg.k=2", *SMAX_TINY],
    "qmix_smax": ["+experiment=qmix_smax_3m", *SMAX_TINY],
    "facmac_smax": ["+experiment=k2_facmac_smax_mmm", *SMAX_TINY],
}
SIZES, QUICK_SIZES = [60, 600, 4096, 16384], [4, 8]
K_OVERHEAD_KS, QUICK_KS = [1, 2, 3, 5], [1, 2]
COMPILED_KS = [1, 2, 5]  # the paper's Table 2
PAPER_STEPS = 2_000_000


class Check:
    """The results so far, rewritten to ``gpu_check.json``/``.md`` after every change."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir, self.lock = args, workdir, threading.RLock()
        self.start = time.monotonic()
        self.children: set[subprocess.Popen] = set()
        self.stopping = False  # set on SIGTERM/SIGINT: no new runs start
        self.data: dict[str, Any] = {"machine": machine(args.device), "options": vars(args) | {"out": str(args.out)}}
        self.data |= {"parts": {}, "goals": {}, "status": "running"}
        self._accepted: dict[tuple[str, ...], list[str]] = {}

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
            self.data["goals"] = goals(self.data)
            self.args.out.mkdir(parents=True, exist_ok=True)
            for name, text in (
                ("gpu_check.json", json.dumps(self.data, indent=1)),
                ("gpu_check.md", report(self.data)),
            ):
                tmp = self.args.out / f".{name}.tmp"
                tmp.write_text(text)
                os.replace(tmp, self.args.out / name)

    def device_overrides(self, overrides: list[str], cpu: bool = False) -> list[str]:
        """Accelerator overrides, with ``env.device``/``buffer.device`` where this configuration accepts them."""
        if cpu or self.args.device == "cpu":
            return ["trainer.accelerator=cpu"]
        key = tuple(overrides)
        if key not in self._accepted:
            from kpg_lightning.train import precheck

            self._accepted[key] = [
                o for o in ("env.device=cuda", "buffer.device=cuda") if precheck([*overrides, o]) is None
            ]
        return ["trainer.accelerator=gpu", "trainer.devices=1", *self._accepted[key]]

    def train(self, name: str, overrides: list[str], timeout_s: float, sample: bool = False) -> dict[str, Any]:
        """One ``python -m kpg_lightning.train`` subprocess: ok/failed, error line, wall time, summary, memory."""
        if self.stopping:
            return {"status": "skipped", "error": "interrupted", "overrides": overrides}
        run_dir = self.workdir / f"{name}_{time.monotonic_ns()}"
        run_dir.mkdir(parents=True)
        memory = run_dir / "gpu_memory.json"
        cmd = [sys.executable, "-m", "kpg_lightning.train", *overrides, f"hydra.run.dir={run_dir}"]
        cmd += ["+callbacks.gpu_mem._target_=gpu_memory.PeakGpuMemory", f"+callbacks.gpu_mem.path={memory}"]
        path = os.pathsep.join([str(HERE), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "PYTHONPATH": path, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONWARNINGS": "ignore"}
        result: dict[str, Any] = {"status": "failed", "overrides": overrides}
        sampler = UtilSampler() if sample and shutil.which("nvidia-smi") else None
        start = time.monotonic()
        with open(run_dir / "log.txt", "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
            )
            self.children.add(proc)
            if sampler:
                sampler.start()
            try:
                rc = proc.wait(timeout=max(1.0, timeout_s))
            except subprocess.TimeoutExpired:
                kill(proc)
                rc = None
            finally:
                self.children.discard(proc)
                if sampler:
                    result["gpu_util"] = sampler.stop()
        result["wall_s"] = round(time.monotonic() - start, 2)
        summary = run_dir / "summary.json"
        if summary.exists() and rc in (0, None):  # None: timed out after training finished (at exit)
            result["status"] = "ok"
            if rc is None:
                result["note"] = f"summary written, then timed out after {timeout_s:.0f} s"
            per_episode = ("kpg", "eval_return_history", "absolute_returns", "absolute_wins")  # long lists
            result["summary"] = {k: v for k, v in json.loads(summary.read_text()).items() if k not in per_episode}
            result["frames"] = result["summary"]["frames"]
        else:
            result["error"] = (
                "interrupted"
                if self.stopping
                else f"timed out after {timeout_s:.0f} s"
                if rc is None
                else error_line(run_dir / "log.txt")
            )
            result["log_tail"] = (run_dir / "log.txt").read_text(errors="replace").splitlines()[-20:]
        if memory.exists():
            result["gpu_memory"] = json.loads(memory.read_text())
        result["run_dir"] = str(run_dir)
        return result

    def run_timeout(self) -> float:
        return min(self.args.run_timeout_s, self.left_s())


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def error_line(log: Path) -> str:
    """The last line of a run's output that names an error (else its last line), at most 300 characters."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("💡")]  # Lightning's advertisement
    named = [line for line in lines if "Error" in line or "error" in line or "Exception" in line]
    return (named or lines or ["no output"])[-1][:300]


def smoke(check: Check) -> dict[str, Any]:
    """A tiny run of each family on the device, ``--jobs`` at a time (they time nothing)."""
    families = check.args.families or list(FAMILIES)
    part: dict[str, Any] = {"runs": {name: {"status": "pending"} for name in families}}
    check.data["parts"]["smoke"] = part
    check.save()

    def one(name: str) -> None:
        if check.left_s() < 15:
            result = {"status": "skipped", "error": "time budget spent"}
        else:
            quiet = [o for o in QUIET if not o.startswith("eval.absolute_episodes=")]  # its one rollout runs
            overrides = [*FAMILIES[name], *TINY, "buffer.updates_per_batch=2", *quiet, "eval.absolute_episodes=1"]
            with check.lock:  # one Hydra composition at a time
                overrides += check.device_overrides(overrides)
            result = check.train(f"smoke_{name}", overrides, min(check.left_s(), 180))
        with check.lock:
            part["runs"][name] = result
            check.save()
        print(f"smoke {name}: {result['status']} {result.get('error', '')}", flush=True)

    with ThreadPoolExecutor(max_workers=check.args.jobs) as pool:
        list(pool.map(one, sorted(families, key=lambda n: not n.endswith("_smax"))))  # slowest (JAX) first
    return part


def vmas_overrides(envs: int, steps: int, k: int, iterations: int, quick: bool) -> list[str]:
    per_batch = envs * steps
    overrides = [*REFERENCE, f"kpg.k={k}", f"env.num_envs={envs}", f"collector.frames_per_batch={per_batch}"]
    overrides += [f"max_frames={per_batch * iterations}", f"buffer.size={max(1_000_000, per_batch)}", *QUIET]
    return overrides + (["buffer.updates_per_batch=2", "buffer.batch_size=32"] if quick else [])


def iteration_stats(run: dict[str, Any], per_batch: int, updates: int) -> None:
    """Collection and whole-iteration frames/s and ms per update: medians after the first iteration (all of
    them where there is only one), and the run's means from ``summary.json``."""
    if run["status"] != "ok":
        return
    try:
        steps = k_overhead.step_medians(Path(run["run_dir"]), 1 if run["summary"]["iterations"] > 1 else 0)
    except (OSError, SystemExit, KeyError, ValueError) as exc:
        run["stats_error"] = str(exc)
        summary = run["summary"]
        steps = {"step": summary["time_per_step_s"], "collect": summary["phases_s"]["collect"]}
    run["iteration_s"], run["collect_s"] = steps["step"], steps["collect"]
    run["collect_fps"] = per_batch / steps["collect"] if steps["collect"] > 0 else None
    run["iteration_fps"] = per_batch / steps["step"]
    run["update_ms"] = 1000 * (steps["step"] - steps["collect"]) / updates
    run["mean_iteration_s"] = run["summary"].get("time_per_step_s")


def vmas(check: Check) -> dict[str, Any]:
    """K = 1 and 2 MADDPG on VMAS balance by env count on the device, then the CPU's 60-env configuration."""
    quick = check.args.quick
    steps, updates = (10, 2) if quick else (100, 100)
    sizes = check.args.sizes or (QUICK_SIZES if quick else SIZES)
    part: dict[str, Any] = {"steps_per_env": steps, "updates_per_iteration": updates, "sizes": sizes}
    part["runs"] = runs = {}
    check.data["parts"]["vmas"] = part
    check.save()
    plan = [(envs, k, False) for envs in sizes for k in (1, 2)]  # K = 1 and 2 side by side at each size
    plan.append((sizes[0] if quick else 60, 1, True))
    for envs, k, cpu in plan:
        name = f"cpu_k{k}_n{envs}" if cpu else f"k{k}_n{envs}"
        iterations = 2 if quick or envs >= 4096 else 3  # the first is dropped as warm-up
        if cpu and check.args.device == "cpu" and runs.get(f"k1_n{envs}", {}).get("status") == "ok":
            runs[name] = runs[f"k1_n{envs}"] | {"same_as": f"k1_n{envs}"}  # the device is the CPU: same run
        elif check.left_s() < 20:
            runs[name] = {"status": "skipped", "error": "time budget spent", "envs": envs, "k": k}
        else:
            overrides = vmas_overrides(envs, steps, k, iterations, quick)
            overrides += check.device_overrides(overrides, cpu=cpu)
            runs[name] = check.train(f"vmas_{name}", overrides, check.run_timeout(), sample=not cpu)
            runs[name] |= {"envs": envs, "k": k, "iterations": iterations}
            runs[name]["device"] = "cpu" if cpu else check.args.device
            iteration_stats(runs[name], envs * steps, updates)
        print(f"vmas {name}: {runs[name]['status']} {runs[name].get('iteration_fps') or ''}", flush=True)
        check.save()
    return part


def k_overhead_part(check: Check) -> dict[str, Any]:
    """``k_overhead.py``'s runs and table on the device: one repeat per (setting, K, compile mode), interleaved by K
    (eager at every K of the table, the compiled modes at :data:`COMPILED_KS`)."""
    quick = check.args.quick
    ks = QUICK_KS if quick else K_OVERHEAD_KS
    frames = {"facmac_halfcheetah": 60, "maddpg_vmas": 1200} if quick else k_overhead.DEFAULT_FRAMES
    warmup = 1 if quick else 5
    modes = check.args.compile
    part: dict[str, Any] = {"ks": ks, "frames": frames, "warmup": warmup, "compile": modes, "runs": {}, "steps": {}}
    check.data["parts"]["k_overhead"] = part
    check.save()
    compiled_ks = QUICK_KS if quick else COMPILED_KS
    plan = [
        (k, mode)
        for k in sorted({*ks, *(compiled_ks if modes != ["none"] else [])})
        for mode in modes
        if k in (ks if mode == "none" else compiled_ks)
    ]
    for k, mode in plan:  # every mode and setting at each K before the next K: a spent budget cuts K, not a setting
        for setting in k_overhead.SETTINGS:
            label = k_overhead.label(setting, mode)
            name = f"{label}_k{k}"
            if check.left_s() < 20:
                part["runs"][name] = {"status": "skipped", "error": "time budget spent"}
            else:
                overrides = k_overhead.overrides(setting, k, frames[setting], mode)
                overrides += check.device_overrides(overrides)
                run_name = f"k_{setting}_{mode}_k{k}"
                run = part["runs"][name] = check.train(run_name, overrides, check.run_timeout())
                if run["status"] == "ok":
                    try:
                        part["steps"].setdefault(label, {})[str(k)] = [
                            k_overhead.step_medians(Path(run["run_dir"]), warmup)
                        ]
                    except (OSError, SystemExit, KeyError, ValueError) as exc:
                        run |= {"status": "failed", "error": f"metrics: {exc}"}
            print(f"k_overhead {name}: {part['runs'][name]['status']}", flush=True)
            check.save()
    return part


def long_run(check: Check) -> dict[str, Any]:
    """K2-FACMAC HalfCheetah 2x3 for ``--long-frames`` steps with the last of ``--compile`` (cudagraphs on a GPU):
    the median time per training step (one env step and one update) and the paper's 2M steps extrapolated."""
    frames = 2000 if check.args.quick else check.args.long_frames
    mode = check.args.compile[-1]
    overrides = k_overhead.overrides("facmac_halfcheetah", 2, frames, mode)
    overrides = [o for o in overrides if not o.startswith("eval.")]
    overrides += ["eval.every_frames=0", "eval.episodes=1", "eval.absolute_episodes=0"]
    overrides += check.device_overrides(overrides)
    part: dict[str, Any] = {"frames": frames, "compile": mode}
    check.data["parts"]["long_run"] = part
    timeout = max(60.0, check.left_s() - 10)
    run = part["run"] = check.train(f"long_facmac_{mode}", overrides, timeout)
    if run["status"] == "ok" or run.get("summary"):
        try:
            steps = k_overhead.step_medians(Path(run["run_dir"]), 50)
            part |= {"step_s": steps["step"], "update_s": steps.get("update"), "steps": steps["steps"]}
            part["paper_2m_h"] = steps["step"] * PAPER_STEPS / 3600
        except (OSError, SystemExit, KeyError, ValueError) as exc:
            part["error"] = f"metrics: {exc}"
    print(f"long_run: {run['status']} {part.get('step_s')}", flush=True)
    return part


PARTS = {"smoke": smoke, "vmas": vmas, "k_overhead": k_overhead_part, "long_run": long_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU smoke test)")
    parser.add_argument(
        "--parts", default="smoke,vmas,k_overhead", help=f"comma-separated, in order, of {','.join(PARTS)}"
    )
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), help="smoke families (default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, help=f"VMAS env counts (default: {SIZES})")
    parser.add_argument("--budget-s", type=float, default=450.0, help="total time; later parts are skipped")
    parser.add_argument("--run-timeout-s", type=float, default=150.0, help="longest one training run may take")
    parser.add_argument("--compile", nargs="+", default=["none"], choices=["none", "default", "cudagraphs"])
    parser.add_argument("--long-frames", type=int, default=50_000, help="steps of the long_run part")
    parser.add_argument("--jobs", type=int, default=None, help="smoke runs side by side (default: 8 on cuda, 1 on cpu)")
    args = parser.parse_args()
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {list(PARTS)}")
    args.jobs = args.jobs or (8 if args.device == "cuda" else 1)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        check = Check(args, Path(tmp))

        def interrupted(signum: int, frame: Any) -> None:
            check.stopping = True
            for proc in list(check.children):
                kill(proc)
            check.data["status"] = f"interrupted by signal {signum}"
            check.save()
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, interrupted)
        signal.signal(signal.SIGINT, interrupted)
        check.save()
        for name in args.parts:
            if check.left_s() < 20:
                check.data["parts"][name] = {"status": "skipped", "error": "time budget spent"}
            else:
                try:
                    part = PARTS[name](check)
                    part["status"] = "done"
                except Exception as exc:  # one broken part must not stop the others
                    check.data["parts"].setdefault(name, {})
                    check.data["parts"][name] |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            check.save()
        check.data["status"] = "done"
        check.save()
    print((args.out / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
