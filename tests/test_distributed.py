"""Multi-process training on CPU with gloo, as a user launches it (torchrun)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this PyTorch has no gloo backend",
)

TRAIN = [
    "--data",
    "demo",
    "--demo.image-size",
    "32",
    "--demo.num-cameras",
    "24",
    "--demo.supersample",
    "1",
    "--demo.num-init-points",
    "500",
    "--sh-degree-interval",
    "15",
    "--densification.refine-start-iter",
    "10",
    "--densification.refine-every",
    "10",
    "--densification.reset-every",
    "1000",
    "--no-progress",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    # One thread per process: two ranks share this machine's cores.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def torchrun(nproc, args, cwd):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        "-m",
        "splatkit",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)


def test_two_processes_match_one_with_the_same_batch_and_resume_on_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    r = torchrun(
        2,
        [
            "train",
            *TRAIN,
            "--max-steps",
            "60",
            "--export-steps",
            "30",
            "60",
            "--output-dir",
            str(two),
            "--summary-json",
            str(tmp_path / "two.json"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # One set of files, written once (only rank 0 writes), nothing else left behind.
    assert sorted(p.name for p in (two / "splats").iterdir()) == ["step_000030.ply", "step_000060.ply"]
    assert sorted(p.name for p in (two / "ckpts").iterdir()) == ["step_000030.ckpt", "step_000060.ckpt"]
    assert r.stdout.count("test PSNR") == 1 and r.stdout.count("wrote ") == 4
    subprocess.run(
        [
            sys.executable,
            "-m",
            "splatkit",
            "train",
            *TRAIN,
            "--max-steps",
            "60",
            "--batch-size",
            "2",
            "--output-dir",
            str(one),
            "--summary-json",
            str(tmp_path / "one.json"),
        ],
        check=True,
        env=env(),
        capture_output=True,
        timeout=600,
    )
    a, b = json.loads((tmp_path / "two.json").read_text()), json.loads((tmp_path / "one.json").read_text())
    # Same global batch, same images, same maths: only the order of float sums differs.
    assert abs(a["test_psnr"] - b["test_psnr"]) < 0.3, (a, b)
    assert abs(a["num_gaussians"] - b["num_gaussians"]) <= 0.01 * b["num_gaussians"], (a, b)

    # The 2-process checkpoint resumes on one process and finishes.
    resumed = tmp_path / "resumed"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "splatkit",
            "train",
            *TRAIN,
            "--max-steps",
            "45",
            "--output-dir",
            str(resumed),
            "--resume",
            str(two / "ckpts" / "step_000030.ckpt"),
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (resumed / "ckpts" / "step_000045.ckpt").is_file() and "test PSNR" in r.stdout


def test_sharded_run_writes_one_set_of_files_matches_one_process_and_resumes(tmp_path):
    """dist_mode="shard": each rank holds half of the Gaussians; exports hold all of them."""
    two, one = tmp_path / "two", tmp_path / "one"
    r = torchrun(
        2,
        [
            "train",
            *TRAIN,
            "--dist-mode",
            "shard",
            "--max-steps",
            "60",
            "--export-steps",
            "30",
            "60",
            "--eval-steps",
            "60",
            "--output-dir",
            str(two),
            "--summary-json",
            str(tmp_path / "two.json"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (two / "splats").iterdir()) == ["step_000030.ply", "step_000060.ply"]
    assert sorted(p.name for p in (two / "ckpts").iterdir()) == ["step_000030.ckpt", "step_000060.ckpt"]
    assert r.stdout.count("test PSNR") == 1 and r.stdout.count("wrote ") == 4
    from splatkit.splat.ply import read_ply
    from splatkit.trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(two / "ckpts" / "step_000060.ckpt")
    n = ckpt["training_state"]["params"]["means"].shape[0]
    a = json.loads((tmp_path / "two.json").read_text())
    # The exports hold every shard: two non-empty shards adding up to the whole splat.
    assert len(ckpt["shards"]) == 2 and min(ckpt["shards"]) > 0 and sum(ckpt["shards"]) == n
    assert read_ply(two / "splats" / "step_000060.ply")["means"].shape[0] == n == a["num_gaussians"]
    assert ckpt["densification"]["grad2d"].shape[0] == n
    # The evaluator (on rank 0, rendering with every rank) saw the whole splat, as the final evaluation did.
    stats = json.loads((two / "stats" / "step_000060.json").read_text())
    assert stats["num_gaussians"] == n and abs(stats["psnr"] - a["test_psnr"]) < 1e-6, (stats, a)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "splatkit",
            "train",
            *TRAIN,
            "--max-steps",
            "60",
            "--batch-size",
            "2",
            "--output-dir",
            str(one),
            "--summary-json",
            str(tmp_path / "one.json"),
        ],
        check=True,
        env=env(),
        capture_output=True,
        timeout=600,
    )
    b = json.loads((tmp_path / "one.json").read_text())
    # Same global batch and maths; the shards draw their own random splits, so counts differ a little.
    assert abs(a["test_psnr"] - b["test_psnr"]) < 0.5, (a, b)
    assert abs(a["num_gaussians"] - b["num_gaussians"]) <= 0.05 * b["num_gaussians"], (a, b)

    # Two ranks resuming the step-30 checkpoint reproduce step 60 exactly.
    again = tmp_path / "again"
    r = torchrun(
        2,
        [
            "train",
            *TRAIN,
            "--dist-mode",
            "shard",
            "--max-steps",
            "60",
            "--output-dir",
            str(again),
            "--resume",
            str(two / "ckpts" / "step_000030.ckpt"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = load_checkpoint(again / "ckpts" / "step_000060.ckpt")
    assert resumed["shards"] == ckpt["shards"]
    for name, p in ckpt["training_state"]["params"].items():
        assert torch.equal(resumed["training_state"]["params"][name], p), name

    # One process resumes the sharded checkpoint and finishes.
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "splatkit",
            "train",
            *TRAIN,
            "--max-steps",
            "45",
            "--output-dir",
            str(tmp_path / "on_one"),
            "--resume",
            str(two / "ckpts" / "step_000030.ckpt"),
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "on_one" / "ckpts" / "step_000045.ckpt").is_file() and "test PSNR" in r.stdout


def test_one_process_checkpoint_resumes_sharded(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "splatkit", "train", *TRAIN, "--max-steps", "20", "--output-dir", str(tmp_path / "one")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(
        2,
        [
            "train",
            *TRAIN,
            "--dist-mode",
            "shard",
            "--max-steps",
            "30",
            "--output-dir",
            str(tmp_path / "two"),
            "--resume",
            str(tmp_path / "one" / "ckpts" / "step_000020.ckpt"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "re-splitting a checkpoint of 1 process into 2 shards" in r.stderr
    from splatkit.trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "two" / "ckpts" / "step_000030.ckpt")
    assert ckpt["step"] == 30 and sum(ckpt["shards"]) == ckpt["training_state"]["params"]["means"].shape[0]


@pytest.mark.parametrize("mode", ["replicate", "shard"])
def test_a_dead_rank_stops_the_other_with_a_clear_error(tmp_path, mode):
    port = free_port()
    procs = []
    for rank in (0, 1):
        e = dict(
            env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "splatkit",
                    "train",
                    *TRAIN,
                    "--max-steps",
                    "100000",
                    "--export-steps",
                    "2",
                    "--output-dir",
                    str(tmp_path / "run"),
                    "--dist-mode",
                    mode,
                ],
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        ckpt = tmp_path / "run" / "ckpts" / "step_000002.ckpt"
        t0 = time.time()
        while not ckpt.exists():  # both ranks are training
            assert time.time() - t0 < 120 and all(p.poll() is None for p in procs), "training did not start"
            time.sleep(0.2)
        time.sleep(1.0)
        procs[1].send_signal(signal.SIGKILL)
        t_kill = time.time()
        _, err = procs[0].communicate(timeout=60)
        elapsed = time.time() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 3, err[-2000:]
    assert "rank 0:" in err and "another rank probably died" in err, err[-2000:]
    assert elapsed < 60
    # The checkpoint written before the failure is complete and loads.
    from splatkit.trainer.checkpoint import load_checkpoint

    assert load_checkpoint(ckpt)["step"] == 2
    assert not list((tmp_path / "run" / "ckpts").glob(".*tmp"))


@pytest.mark.parametrize("survivor", [0, 1])
def test_a_rank_killed_before_the_group_forms_ends_the_run_clearly(tmp_path, survivor):
    """Rank 0 hosts the rendezvous; whichever rank survives says so in one line and exits 3
    after --dist-join-timeout, not after the 600 s collective timeout with a traceback."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        e = dict(
            env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
        )
        args = ["train", *TRAIN, "--max-steps", "5", "--output-dir", str(tmp_path / "run"), "--dist-join-timeout", "3"]
        procs.append(
            subprocess.Popen([sys.executable, "-m", "splatkit", *args], env=e, stderr=subprocess.PIPE, text=True)
        )
    procs[1 - survivor].send_signal(signal.SIGKILL)  # long before it could import torch
    try:
        _, err = procs[survivor].communicate(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[survivor].returncode == 3, err[-2000:]
    assert f"splatkit: error: rank {survivor}: the 2 ranks did not all join the process group" in err, err[-2000:]
    assert "within 3 s" in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "run").exists()  # nothing was written


def _diverge_worker(rank, init_file, out):
    import torch.distributed as dist

    from splatkit.trainer.distributed import SplatDistributedError, check_in_sync, exit_process

    # A rendezvous file, not a TCP port: no port can be taken by another process meanwhile.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    params = {"means": torch.zeros(5, 3)}
    check_in_sync(params, rank, 1)  # identical: passes
    params["means"][0, 0] = float(rank)  # rank 1 drifts
    try:
        check_in_sync(params, rank, 2)
        result = "no error"
    except SplatDistributedError as e:
        result = str(e)
    dist.destroy_process_group()
    with open(f"{out}/{rank}.txt", "w") as f:
        f.write(result)
    exit_process(0)  # not the interpreter's finalisation, which gloo's threads can abort


def test_replicas_that_drift_apart_are_reported(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_diverge_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        text = (tmp_path / f"{rank}.txt").read_text()
        assert f"rank {rank}: the ranks' Gaussians diverged by step 2" in text, text


def _sharded_errors_worker(rank, init_file, out):
    import torch.distributed as dist

    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
    from splatkit.modules import SplatViewer
    from splatkit.renderer import Splat3DGSRenderer, SplatRenderer
    from splatkit.trainer import SplatTrainer, SplatTrainerConfig
    from splatkit.trainer.distributed import exit_process

    class OwnRenderer(SplatRenderer):  # a user's renderer that knows nothing of shards
        def render(self, params, cameras, sh_degree, backgrounds=None):
            return Splat3DGSRenderer().render(params, cameras, sh_degree, backgrounds)

    # A rendezvous file, not a TCP port: no port can be taken by another process meanwhile.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    provider = SplatDemoDataProvider(
        SplatDemoDataProviderConfig(image_size=16, num_cameras=8, num_init_points=50, supersample=1)
    )
    cfg = SplatTrainerConfig(max_steps=2, dist_mode="shard", output_dir=f"{out}/run{rank}")
    messages = []
    for kwargs in ({"renderer": OwnRenderer()}, {"modules": [SplatViewer()]}):
        try:
            SplatTrainer(cfg, provider, **kwargs)
            messages.append("no error")
        except ValueError as e:
            messages.append(str(e))
    trainer = SplatTrainer(cfg, provider)
    trainer.setup()
    if rank == 0:  # rank 0 alone, outside a hook or lead(): refused at once, nothing waits
        try:
            trainer.evaluate()
            messages.append("no error")
        except RuntimeError as e:
            messages.append(str(e))
    metrics = trainer.lead(trainer.evaluate)  # every rank: rank 0 evaluates, rank 1 renders with it
    messages.append("psnr" if rank == 0 and metrics["psnr"] > 0 else repr(metrics))
    dist.barrier()
    dist.destroy_process_group()
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(messages, f)
    exit_process(0)  # not the interpreter's finalisation, which gloo's threads can abort


def test_sharded_2dgs_matches_replicated(tmp_path):
    args = ["train", *TRAIN, "--model", "2dgs", "--max-steps", "40"]
    r = torchrun(
        2,
        [
            *args,
            "--dist-mode",
            "shard",
            "--output-dir",
            str(tmp_path / "shard"),
            "--summary-json",
            str(tmp_path / "shard.json"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(
        2, [*args, "--output-dir", str(tmp_path / "rep"), "--summary-json", str(tmp_path / "rep.json")], tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("shard", "rep"))
    assert abs(a["test_psnr"] - b["test_psnr"]) < 0.5, (a, b)
    assert abs(a["num_gaussians"] - b["num_gaussians"]) <= 0.05 * b["num_gaussians"], (a, b)
    from splatkit.trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "shard" / "ckpts" / "step_000040.ckpt")
    assert ckpt["training_state"]["params"]["scales"].shape == (a["num_gaussians"], 2)  # surfels, whole splat


def test_sharded_mode_refuses_what_it_cannot_do(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_sharded_errors_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    m0, m1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    for m in (m0, m1):
        assert "dist_mode='shard' needs a renderer with a 'distributed' field" in m[0], m
        assert "SplatViewer cannot run in a sharded run" in m[1], m
    assert "needs every rank: call it from a module hook or inside SplatTrainer.lead" in m0[2], m0
    assert m0[3] == "psnr" and m1[2] == "None", (m0, m1)
