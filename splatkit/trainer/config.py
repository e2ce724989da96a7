"""Trainer configuration (a plain dataclass; the CLI flags are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SplatTrainerConfig:
    """How to train. Defaults follow the 3DGS paper and gsplat."""

    max_steps: int = 30_000
    """Optimiser steps; step s means "after s steps" (1-based)."""
    output_dir: str = "results"
    """Folder for the run's own record (``trainer_config.json``); modules choose their own folders."""
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
    init_type: str = "points"
    """"points": Gaussians on the provider's point cloud (random if it has none); "random": uniform in a cube."""
    init_num_points: int = 100_000
    """Number of Gaussians for ``init_type="random"``."""
    init_extent: float = 3.0
    """Half-size of the random-init cube, in units of the scene scale."""
    init_opacity: float = 0.1
    init_scale: float = 1.0
    """Initial scales are this times the mean distance to the 3 nearest points."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour behind the Gaussians (RGB in [0, 1])."""
    lr_means: float = 1.6e-4
    """Means' rate, multiplied by the scene scale, decayed exponentially to ``lr_means_final_ratio`` of it."""
    lr_means_final_ratio: float = 0.01
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    dist_mode: str = "replicate"
    """Multi-process runs (torchrun): "replicate" (every rank holds the whole splat and renders its
    own images; gradients are averaged) or "shard" (the Gaussians are split across ranks; each
    rank renders its images from all shards; for splats too large for one device)."""
    dist_timeout: float = 600.0
    """Seconds a rank waits for the others in a collective before giving up (multi-process runs)."""
    profile_steps: bool = False
    """Record each step's phase times (data, render, loss, backward, optimizer, densification,
    modules) in ``SplatTrainer.step_timings``; on CUDA this adds a sync per phase."""

    def __post_init__(self) -> None:
        checks = [
            ("max_steps", self.max_steps >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("sh_degree", 0 <= self.sh_degree <= 3, "in 0..3"),
            ("sh_degree_interval", self.sh_degree_interval >= 1, "a positive integer"),
            ("init_type", self.init_type in ("points", "random"), "'points' or 'random'"),
            ("init_opacity", 0 < self.init_opacity < 1, "in (0, 1)"),
            ("lr_means_final_ratio", 0 < self.lr_means_final_ratio <= 1, "in (0, 1]"),
            ("background", len(self.background) == 3, "three numbers (RGB)"),
            ("dist_mode", self.dist_mode in ("replicate", "shard"), "'replicate' or 'shard'"),
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
