"""SIGKILL ``splatkit train`` at random moments while it exports every step; prints JSON.

    python benchmarks/kill_exports.py              # 20 kills
    python benchmarks/kill_exports.py --kills 5

A reference run trains a small demo scene (20,000 initial Gaussians, so writes take a real
share of each step) for ``--steps`` steps and exports every step: a checkpoint and the splat
in all four formats (``.ply``, ``.splat``, ``.spz``, ``.compressed.ply``). Then, ``--kills``
times, the same command runs into a fresh folder and is SIGKILLed at a random moment after
its first checkpoint (uniform over the time the reference took from its first export to its
last). After each kill:

- every splat and checkpoint in the folder must load (``read_splat``: a partial file would
  fail its size, gzip or checksum check) — ``partial_files``;
- the run is resumed into the same folder from its newest checkpoint (or restarted with
  ``--overwrite`` when none was written), which must remove the temporary files the killed
  run left (``temp_files_after_next_run``) and end with a final checkpoint equal to the
  reference's (``resumes_exact``: every parameter within 1e-6, as tests/test_trainer.py).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DEMO = [
    "--data",
    "demo",
    "--demo.num-cameras",
    "12",
    "--demo.image-size",
    "32",
    "--demo.supersample",
    "1",
    "--demo.num-init-points",
    "20000",
    "--no-progress",
]
FORMATS = ["--splat-format", "ply", "splat", "spz", "compressed_ply"]


def command(out: Path, steps: int, *extra: str) -> list[str]:
    every = [str(s) for s in range(1, steps + 1)]
    return [sys.executable, "-m", "splatkit", "train", *DEMO, "--max-steps", str(steps), "--export-steps", *every,
            *FORMATS, "--output-dir", str(out), *extra]  # fmt: skip


def final_params(out: Path, steps: int) -> dict[str, torch.Tensor]:
    from splatkit.trainer.checkpoint import load_checkpoint

    return load_checkpoint(out / "ckpts" / f"step_{steps:06d}.ckpt")["training_state"]["params"]


def main() -> None:
    from splatkit.splat.formats import read_splat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    summary = dict.fromkeys(("kills", "files_checked", "partial_files", "temp_files_left_by_kills"), 0)
    summary.update(dict.fromkeys(("temp_files_after_next_run", "resumed", "restarted", "resumes_exact"), 0))
    summary["max_abs_diff"] = 0.0
    with tempfile.TemporaryDirectory(prefix="splatkit-kill-") as tmp:
        ref = Path(tmp) / "reference"
        t0 = time.time()
        proc = subprocess.Popen(command(ref, args.steps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first, last = (ref / "ckpts" / f"step_{s:06d}.ckpt" for s in (1, args.steps))
        while not first.exists() and proc.poll() is None:
            time.sleep(0.02)
        t_first = time.time()
        while not last.exists() and proc.poll() is None:
            time.sleep(0.02)
        train_seconds = time.time() - t_first  # from the first export to the last
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the reference run failed:\n{err}")
        reference = final_params(ref, args.steps)
        print(f"reference run: {time.time() - t0:.1f} s, {train_seconds:.1f} s of it exporting", file=sys.stderr)

        for k in range(args.kills):
            out = Path(tmp) / f"run_{k}"
            proc = subprocess.Popen(command(out, args.steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            first = out / "ckpts" / "step_000001.ckpt"
            while not first.exists() and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, train_seconds))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            summary["kills"] += 1
            ckpts = []
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                if path.name.startswith("."):
                    summary["temp_files_left_by_kills"] += path.name.endswith(".tmp")
                    continue
                if path.suffix not in (".ply", ".splat", ".spz", ".ckpt"):
                    continue
                summary["files_checked"] += 1
                try:
                    read_splat(path)
                    ckpts += [path] if path.suffix == ".ckpt" else []
                except Exception as e:  # noqa: BLE001  (what the test is looking for)
                    summary["partial_files"] += 1
                    print(f"kill {k}: {path} does not load: {e}", file=sys.stderr)
            extra = ["--resume", str(ckpts[-1])] if ckpts else ["--overwrite"]
            summary["resumed" if ckpts else "restarted"] += 1
            done = subprocess.run(command(out, args.steps, *extra), capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"kill {k}: the next run failed:\n{done.stderr}")
            summary["temp_files_after_next_run"] += sum(1 for _ in out.rglob(".*.tmp"))
            got = final_params(out, args.steps)
            diff = (
                max(float((got[n] - reference[n]).abs().max()) for n in reference)
                if all(got[n].shape == reference[n].shape for n in reference)
                else float("inf")
            )
            summary["max_abs_diff"] = max(summary["max_abs_diff"], diff)
            summary["resumes_exact"] += diff <= 1e-6
            print(f"kill {k}: {'resumed from ' + ckpts[-1].name if ckpts else 'restarted'}, diff {diff:.2e}",
                  file=sys.stderr)  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
