"""The GPU check harness runs end to end at toy sizes with the CPU backend standing in
for gsplat, so the script a GPU session runs once is known to work before it gets there."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu_check.py"),
            "--dry-run",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.read_text())
    assert result["candidate"] == "cpu"
    cases = result["parity"]["cases"]
    assert {c["case"] for c in cases} >= {
        "random_shNone",
        "random_sh3",
        "edge_cases",
        "edge_cases_antialiased",
        "edge_cases_sharded_stages",
    }
    assert result["parity"]["all_pass"], [c for c in cases if not c["pass"]]
    assert set(cases[0]["grad_rel_l2"]) == {"means", "quats", "scales", "opacities", "colors"}
    overhead = result["overhead"]
    assert "error" not in overhead, overhead.get("error")
    assert overhead["ratio"] > 0 and len(overhead["rounds"]) == 2
    real = result["real"]
    assert "error" not in real.get("gpu", {}) and "error" not in real.get("cpu", {}), real
    assert real["gpu"]["steps"] == 20 and real["psnr_gap_db"] == 0.0  # same device and backend: identical
    multi = result["multi_gpu"]
    assert multi["processes"] == 2 and abs(multi["multi"]["test_psnr"] - multi["single"]["test_psnr"]) < 0.3, multi
    assert "error" not in multi["multi_sharded"], multi["multi_sharded"]
    assert multi["multi_sharded"]["num_gaussians"] > 0
