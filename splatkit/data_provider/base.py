"""Data provider interface: cameras, target images and an initial point cloud."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from splatkit.splat.cameras import SplatCameras


@dataclass
class SplatFrames:
    """Target images for a batch of ``C`` cameras.

    Attributes:
        cameras: the cameras (:class:`~splatkit.splat.cameras.SplatCameras`).
        images: ``[C, H, W, 3]`` float RGB in [0, 1].
        masks: ``[C, H, W, 1]`` bool, True where the loss applies; ``None`` for all pixels.
        names: image names, for reports.
        depths: ``[C, H, W, 1]`` float depth targets (z along the camera's axis, in the
            training frame's units), 0 where a pixel has none; ``None`` without depth
            supervision.
    """

    cameras: SplatCameras
    images: torch.Tensor
    masks: torch.Tensor | None
    names: list[str]
    depths: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> SplatFrames:
        return SplatFrames(
            self.cameras.to(device),
            self.images.to(device, non_blocking=True),
            None if self.masks is None else self.masks.to(device, non_blocking=True),
            self.names,
            None if self.depths is None else self.depths.to(device, non_blocking=True),
        )

    @staticmethod
    def cat(items: list[SplatFrames]) -> SplatFrames:
        def joined(name: str, fill):
            parts = [getattr(f, name) for f in items]
            if all(p is None for p in parts):
                return None
            return torch.cat([fill(f) if p is None else p for f, p in zip(items, parts)])

        return SplatFrames(
            SplatCameras.cat([f.cameras for f in items]),
            torch.cat([f.images for f in items]),
            joined("masks", lambda f: torch.ones_like(f.images[..., :1], dtype=torch.bool)),
            [n for f in items for n in f.names],
            joined("depths", lambda f: torch.zeros_like(f.images[..., :1])),
        )


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    """The seeded permutation of ``n`` training frames for one epoch (computed once, not
    once per sample: every step and every prefetch look-ahead reads it)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=gen).tolist())


class SplatDataProvider(ABC):
    """Where training gets its cameras, images and initial Gaussians.

    Subclasses implement the frame accessors; the base class turns them into
    batches. Which training images a step uses is a pure function of
    ``(seed, step)``, so a run resumed from a checkpoint sees the same images as an
    uninterrupted one without saving any sampler state.
    """

    has_depths: bool = False
    """Whether frames carry depth targets (:attr:`SplatFrames.depths`)."""

    transform: torch.Tensor | None = None
    """``[4, 4]`` similarity from the capture's own frame to the training frame, for
    providers that normalise their cameras (exports map back with its inverse); None when
    the training frame is the capture's."""

    @property
    @abstractmethod
    def scene_scale(self) -> float:
        """Scene extent (radius around the cameras' centre), scales the means' rate and densification."""

    @property
    def background(self) -> tuple[float, float, float] | None:
        """The colour the target images were composited over (RGBA captures), which renders
        must be drawn over to match them; None when the images carry no such colour."""
        return None

    @abstractmethod
    def num_train_frames(self) -> int: ...

    @abstractmethod
    def num_test_frames(self) -> int: ...

    @abstractmethod
    def train_frame(self, index: int) -> SplatFrames:
        """Training frame ``index`` as a batch of one, on the CPU."""

    @abstractmethod
    def test_frame(self, index: int) -> SplatFrames:
        """Test frame ``index`` as a batch of one, on the CPU."""

    def train_cameras(self) -> list[SplatCameras]:
        """The training frames' cameras (one batch of one each), without their images.

        This default reads every training frame; providers with cheaper access override it.
        """
        return [self.train_frame(i).cameras for i in range(self.num_train_frames())]

    def train_names(self) -> list[str]:
        """The training frames' image names, in :meth:`train_cameras` order.

        This default reads every training frame; providers with cheaper access override it.
        """
        return [self.train_frame(i).names[0] for i in range(self.num_train_frames())]

    def train_alphas(self) -> list[torch.Tensor] | None:
        """Coverage ``[H, W]`` (float in [0, 1]) of each training frame, in
        :meth:`train_cameras` order, for captures whose images have an alpha channel
        (NeRF-synthetic and other object captures); None when they have none."""
        return None

    @abstractmethod
    def initial_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial point cloud: ``(points [P, 3], colors [P, 3] in [0, 1])``."""

    def train_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """Training frames of step ``step`` (1-based): epochs of seeded random permutations."""
        n = self.num_train_frames()
        if n == 0:
            raise ValueError(f"{type(self).__name__} has no training frames")
        out = []
        for sample in range((step - 1) * batch_size, step * batch_size):
            epoch, pos = divmod(sample, n)
            out.append(_epoch_order(seed, epoch, n)[pos])
        return out

    def rank_indices(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Rank ``rank``'s share of step ``step``'s global batch of ``batch_size * world_size`` frames."""
        return self.train_indices(step, batch_size * world_size, seed)[rank * batch_size : (rank + 1) * batch_size]

    def train_batch(
        self, step: int, batch_size: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> SplatFrames:
        """The frames step ``step`` trains on (this rank's share of them), on the CPU."""
        return SplatFrames.cat(
            [self.train_frame(i) for i in self.rank_indices(step, batch_size, seed, rank, world_size)]
        )

    def test_frames(self) -> Iterator[SplatFrames]:
        for i in range(self.num_test_frames()):
            yield self.test_frame(i)

    def describe(self) -> str:
        """One line for the log: what was loaded (sizes, split, background, ...)."""
        return f"{self.num_train_frames()} train and {self.num_test_frames()} test frames"

    def check_frames(self) -> None:  # noqa: B027  (optional hook, a no-op by default)
        """Raise a :class:`~splatkit.errors.DataError` naming the file when an image or mask
        cannot be trained on (unreadable, truncated, of the wrong size); the trainer calls it
        before step 1, so a bad file in the middle of a capture is not found hours in.
        Providers that make their images (the demo scene) have nothing to check."""

    def close(self) -> None:  # noqa: B027  (optional hook, a no-op by default)
        """Release worker threads or files; the provider is not used afterwards."""

    def state_dict(self) -> dict:
        """Provider state to checkpoint; empty for providers whose sampling is stateless."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state
