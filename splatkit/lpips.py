"""LPIPS (Zhang et al. 2018, v0.1) with AlexNet or VGG16 features, without torchvision.

The network is small enough to write down: a fixed input scaling, the convolutional
part of the backbone tapped after five ReLUs, unit-normalised channels, squared
differences weighted by learned 1x1 convolutions, averaged over space and summed over
taps. Nothing is downloaded. Two weight files are needed:

- the backbone as torchvision saves it (``alexnet-owt-7be5be79.pth`` or
  ``vgg16-397923af.pth``), looked up in ``weights_dir`` and then in torch hub's checkpoint
  folder (``torch.hub.get_dir()/checkpoints``, where torchvision puts its downloads);
- the LPIPS heads (``alex.pth`` / ``vgg.pth`` of the ``lpips`` package's ``weights/v0.1``),
  looked up as ``lpips_<net>.pth`` or ``<net>.pth`` in ``weights_dir``, then in the hub
  checkpoint folder, then in an installed ``lpips`` package.

When a file is missing, :func:`load_lpips` raises :class:`LPIPSUnavailable` naming the
files and where to put them; evaluation then reports "lpips: unavailable" instead of a number.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F

BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# (out_channels, kernel, stride, padding) of each conv and "M" for max-pooling, in
# torchvision's ``features`` order; ``taps`` are the indices of the ReLUs LPIPS reads.
_ARCH = {
    "alex": {
        "layers": [
            (64, 11, 4, 2),
            "R",
            "M",
            (192, 5, 1, 2),
            "R",
            "M",
            (384, 3, 1, 1),
            "R",
            (256, 3, 1, 1),
            "R",
            (256, 3, 1, 1),
            "R",
        ],
        "taps": (1, 4, 7, 9, 11),
    },
    "vgg": {
        "layers": [
            (64, 3, 1, 1),
            "R",
            (64, 3, 1, 1),
            "R",
            "M",
            (128, 3, 1, 1),
            "R",
            (128, 3, 1, 1),
            "R",
            "M",
            (256, 3, 1, 1),
            "R",
            (256, 3, 1, 1),
            "R",
            (256, 3, 1, 1),
            "R",
            "M",
            (512, 3, 1, 1),
            "R",
            (512, 3, 1, 1),
            "R",
            (512, 3, 1, 1),
            "R",
            "M",
            (512, 3, 1, 1),
            "R",
            (512, 3, 1, 1),
            "R",
            (512, 3, 1, 1),
            "R",
        ],
        "taps": (3, 8, 15, 22, 29),
    },
}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPSUnavailable(RuntimeError):
    """LPIPS weights are not on this machine (the message says which and where to put them)."""


def tap_channels(net: str) -> list[int]:
    """Channels of the five tapped feature maps (the LPIPS heads' input sizes)."""
    layers = _ARCH[net]["layers"]
    out, c = [], 3
    for i, layer in enumerate(layers):
        if isinstance(layer, tuple):
            c = layer[0]
        if i in _ARCH[net]["taps"]:
            out.append(c)
    return out


def backbone_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """torchvision state-dict keys and shapes of the backbone's ``features`` convolutions."""
    shapes, c = {}, 3
    for i, layer in enumerate(_ARCH[net]["layers"]):
        if isinstance(layer, tuple):
            shapes[f"features.{i}.weight"] = (layer[0], c, layer[1], layer[1])
            shapes[f"features.{i}.bias"] = (layer[0],)
            c = layer[0]
    return shapes


def _search_dirs(weights_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(weights_dir)] if weights_dir else []
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "weights" / "v0.1")
    return dirs


def _find(names: list[str], dirs: list[Path]) -> Path | None:
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


class LPIPS(torch.nn.Module):
    """``forward(img, gt) -> [B]`` LPIPS distance of ``[B, H, W, 3]`` images in [0, 1]."""

    def __init__(self, net: str, backbone: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if net not in _ARCH:
            raise ValueError(f"lpips net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        expected = backbone_shapes(net)
        for key, shape in expected.items():
            if key not in backbone or tuple(backbone[key].shape) != shape:
                got = tuple(backbone[key].shape) if key in backbone else "missing"
                raise ValueError(f"LPIPS {net} backbone: {key} should be {shape}, got {got}")
        self.weights = torch.nn.ParameterDict(
            {k.replace(".", "_"): torch.nn.Parameter(backbone[k].float(), requires_grad=False) for k in expected}
        )
        self.heads = torch.nn.ParameterList()
        for i, c in enumerate(tap_channels(net)):
            w = heads.get(f"lin{i}.model.1.weight")
            if w is None or tuple(w.shape) != (1, c, 1, 1):
                raise ValueError(
                    f"LPIPS {net} heads: lin{i}.model.1.weight should be (1, {c}, 1, 1), "
                    f"got {None if w is None else tuple(w.shape)}"
                )
            self.heads.append(torch.nn.Parameter(w.float(), requires_grad=False))
        self.register_buffer("shift", torch.tensor(_SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).reshape(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, out = _ARCH[self.net]["taps"], []
        for i, layer in enumerate(_ARCH[self.net]["layers"]):
            if layer == "R":
                x = F.relu(x)
            elif layer == "M":
                x = F.max_pool2d(x, 3, 2) if self.net == "alex" else F.max_pool2d(x, 2, 2)
            else:
                _, _, stride, pad = layer
                x = F.conv2d(x, self.weights[f"features_{i}_weight"], self.weights[f"features_{i}_bias"], stride, pad)
            if i in taps:
                out.append(x)
        return out

    @torch.no_grad()
    def forward(self, img: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        def prep(t):
            return ((t.permute(0, 3, 1, 2).float() * 2 - 1) - self.shift) / self.scale

        total = 0.0
        for head, fa, fb in zip(self.heads, self.features(prep(img)), self.features(prep(gt))):
            na = fa / (fa.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((na - nb).square(), head).mean(dim=(2, 3))
        return total[:, 0]


def load_lpips(
    net: str = "alex", weights_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu"
) -> LPIPS:
    """The LPIPS metric with local weights, or :class:`LPIPSUnavailable` saying what is missing."""
    if net not in _ARCH:
        raise ValueError(f"lpips_net must be 'alex' or 'vgg', got {net!r}")
    dirs = _search_dirs(weights_dir)
    backbone = _find([BACKBONE_FILES[net]], dirs)
    heads = _find([f"lpips_{net}.pth", f"{net}.pth"], dirs)
    missing = [f"{BACKBONE_FILES[net]} (torchvision's {net} weights)"] if backbone is None else []
    missing += [f"lpips_{net}.pth (the lpips package's weights/v0.1/{net}.pth)"] if heads is None else []
    if missing:
        raise LPIPSUnavailable(
            f"missing {' and '.join(missing)}; looked in {', '.join(str(d) for d in dirs)}. Put the files in "
            f"{dirs[0]} (or pass lpips_weights=DIR); nothing is downloaded"
        )
    try:
        model = LPIPS(
            net,
            torch.load(backbone, map_location="cpu", weights_only=True),
            torch.load(heads, map_location="cpu", weights_only=True),
        )
    except Exception as e:  # a wrong or damaged file: say which
        raise LPIPSUnavailable(f"could not load LPIPS weights {backbone} / {heads}: {e}") from e
    return model.to(device).eval()
