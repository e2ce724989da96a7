"""Trainer configuration (a plain dataclass; the CLI flags are generated from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from splatkit.data_provider.images import is_rgb_colour


@dataclass
class SplatTrainerConfig:
    """How to train. Defaults follow the 3DGS paper and gsplat."""

    max_steps: int = 30_000
    """Optimiser steps; step s means "after s steps" (1-based)."""
    output_dir: str = "results"
    """Folder of the run: its record (``trainer_config.json``); from the command line, every file the run
    writes, by default results/<data name>/<date>_<time>. (Python modules choose their own folders.)"""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ..."""
    seed: int = 0
    """Seeds initialisation, image order and every random choice of training."""
    batch_size: int = 1
    """Images per step; learning rates are scaled by sqrt(batch_size) as in gsplat."""
    sh_degree: int = 3
    """Largest spherical-harmonics degree."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps."""
    init_type: str = "auto"
    """"points": one Gaussian per point of the provider's point cloud (SfM points); "random":
    ``init_num_points`` uniform in the volume the training cameras look at
    (:mod:`splatkit.splat.initialization`); "auto": points when the provider has them, else random."""
    init_num_points: int = 100_000
    """Number of Gaussians of a random start."""
    init_extent: float = 1.0
    """Random start: half-size of the cube searched for the viewed volume, in median camera distances
    from the point the cameras look at."""
    init_coverage: float = 0.5
    """Random start: keep points seen by at least this fraction of the cameras that see the best-seen point."""
    init_surround: float = 0.25
    """Random start: this fraction of the points goes into the capture's surroundings, the wider volume a
    few cameras see (3x the cube, seen by 5% as many cameras as the best-seen point)."""
    init_opacity: float | None = None
    """Opacity of the initial Gaussians; None: the densification strategy's (0.1; MCMC 0.5)."""
    init_scale: float | None = None
    """Initial scales are this times the RMS distance to the 3 nearest points; None: the
    densification strategy's (1.0; MCMC 0.1)."""
    background: tuple[float, float, float] | None = None
    """Colour behind the Gaussians (RGB in [0, 1]). None: the data's (the colour its RGBA images were
    composited over, e.g. white for NeRF-synthetic scenes), else black."""
    lr_means: float = 1.6e-4
    """Means' rate, multiplied by the scene scale, decayed exponentially to ``lr_means_final_ratio`` of it."""
    lr_means_final_ratio: float = 0.01
    """Means' learning rate at the last step, as a fraction of the first."""
    lr_scales: float = 5e-3
    """Learning rate of the log scales."""
    lr_quats: float = 1e-3
    """Learning rate of the rotations (quaternions)."""
    lr_opacities: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_sh0: float = 2.5e-3
    """Learning rate of the base colour (SH band 0)."""
    lr_shN: float = 2.5e-3 / 20
    """Learning rate of the view-dependent colour (SH bands 1 and up)."""
    dist_mode: str = "replicate"
    """Multi-process runs (torchrun): "replicate" (every rank holds the whole splat and renders its
    own images; gradients are averaged) or "shard" (the Gaussians are split across ranks; each
    rank renders its images from all shards; for splats too large for one device)."""
    dist_timeout: float = 600.0
    """Seconds a rank waits for the others in a collective before giving up (multi-process runs)."""
    dist_join_timeout: float = 120.0
    """Seconds a rank waits at start for all ranks to join the process group (a rank that died
    before joining ends the run after this, with exit status 3)."""
    profile_steps: bool = False
    """Record each step's phase times (data, render, loss, backward, optimizer, densification,
    modules) in ``SplatTrainer.step_timings``; on CUDA this adds a sync per phase."""

    def __post_init__(self) -> None:
        checks = [
            ("max_steps", self.max_steps >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("sh_degree", 0 <= self.sh_degree <= 3, "in 0..3"),
            ("sh_degree_interval", self.sh_degree_interval >= 1, "a positive integer"),
            ("init_type", self.init_type in ("auto", "points", "random"), "'auto', 'points' or 'random'"),
            ("init_num_points", self.init_num_points >= 2, "an integer >= 2"),
            ("init_extent", math.isfinite(self.init_extent) and self.init_extent > 0, "a positive number"),
            ("init_coverage", 0 < self.init_coverage <= 1, "in (0, 1]"),
            ("init_surround", 0 <= self.init_surround < 1, "in [0, 1)"),
            ("init_opacity", self.init_opacity is None or 0 < self.init_opacity < 1, "None or in (0, 1)"),
            (
                "init_scale",
                self.init_scale is None or (math.isfinite(self.init_scale) and self.init_scale > 0),
                "None or a positive number",
            ),
            ("lr_means_final_ratio", 0 < self.lr_means_final_ratio <= 1, "in (0, 1]"),
            *[
                (
                    f"lr_{n}",
                    math.isfinite(getattr(self, f"lr_{n}")) and getattr(self, f"lr_{n}") >= 0,
                    "finite and >= 0",
                )
                for n in ("means", "scales", "quats", "opacities", "sh0", "shN")
            ],
            (
                "background",
                self.background is None or is_rgb_colour(self.background),
                "None or three numbers in [0, 1] (RGB)",
            ),
            ("dist_mode", self.dist_mode in ("replicate", "shard"), "'replicate' or 'shard'"),
            *[
                (n, math.isfinite(getattr(self, n)) and getattr(self, n) > 0, "a positive number of seconds")
                for n in ("dist_timeout", "dist_join_timeout")
            ],
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SplatTrainerConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    def learning_rates(self, scene_scale: float) -> dict[str, float]:
        """Base rate per parameter group; the means' rate includes the scene scale."""
        return {
            "means": self.lr_means * scene_scale,
            "scales": self.lr_scales,
            "quats": self.lr_quats,
            "opacities": self.lr_opacities,
            "sh0": self.lr_sh0,
            "shN": self.lr_shN,
        }
