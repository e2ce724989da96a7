"""Camera models of real captures and their undistortion to pinhole images (OpenCV).

Intrinsics use splatkit's pixel convention (pixel centres at ``+0.5``, as COLMAP and
nerfstudio do); OpenCV puts pixel centres at integers, so principal points are
shifted by half a pixel on the way in and out of OpenCV.

Undistorted images keep only pixels that come from inside the original photo: the new
intrinsics come from OpenCV (``alpha=0`` / ``balance=0``), then the image is cropped to
a rectangle in which every pixel maps inside the source, so there are no black or
smeared borders. The crop shifts the principal point. Masks go through the same map
(nearest neighbour) and crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from splatkit.data_provider.images import DataError

# COLMAP camera model -> (splatkit model, parameter names)
COLMAP_MODELS = {
    "SIMPLE_PINHOLE": ("pinhole", ("f", "cx", "cy")),
    "PINHOLE": ("pinhole", ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": ("opencv", ("f", "cx", "cy", "k1")),
    "RADIAL": ("opencv", ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": ("opencv", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    "FULL_OPENCV": ("opencv", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    "OPENCV_FISHEYE": ("fisheye", ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")),
}


@dataclass(frozen=True)
class CameraIntrinsics:
    """A camera as captured.

    ``model`` is "pinhole", "opencv" (``dist`` = k1 k2 p1 p2 [k3 k4 k5 k6], OpenCV's
    radial-tangential / rational model) or "fisheye" (``dist`` = k1..k4, OpenCV's
    equidistant fisheye). Principal point in splatkit's convention.
    """

    model: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, ...] = ()

    @property
    def is_distorted(self) -> bool:
        return self.model != "pinhole" and any(d != 0.0 for d in self.dist)

    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera for an image resized to ``width x height``."""
        sx, sy = width / self.width, height / self.height
        return replace(
            self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy
        )


def intrinsics_from_colmap(model: str, width: int, height: int, params, where: str) -> CameraIntrinsics:
    """Build :class:`CameraIntrinsics` from a COLMAP camera; ``where`` names it in errors."""
    if model not in COLMAP_MODELS:
        raise DataError(
            f"{where}: camera model {model} is not supported; supported models: {', '.join(COLMAP_MODELS)}. "
            "Undistort the images first (colmap image_undistorter) or recalibrate with a supported model."
        )
    kind, names = COLMAP_MODELS[model]
    p = dict(zip(names, (float(v) for v in params)))
    if len(params) != len(names):
        raise DataError(f"{where}: {model} needs {len(names)} parameters ({' '.join(names)}), got {len(params)}")
    fx = p.get("fx", p.get("f"))
    fy = p.get("fy", p.get("f"))
    if kind == "opencv":
        dist = tuple(p.get(k, 0.0) for k in ("k1", "k2", "p1", "p2"))
        if model == "FULL_OPENCV":
            dist += tuple(p[k] for k in ("k3", "k4", "k5", "k6"))
    elif kind == "fisheye":
        dist = tuple(p[k] for k in ("k1", "k2", "k3", "k4"))
    else:
        dist = ()
    return CameraIntrinsics(kind, int(width), int(height), fx, fy, p["cx"], p["cy"], dist)


def _to_cv(K: np.ndarray) -> np.ndarray:
    K = K.copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def _from_cv(K: np.ndarray) -> np.ndarray:
    K = K.copy()
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def _valid_rectangle(valid: np.ndarray) -> tuple[int, int, int, int]:
    """A large axis-aligned rectangle ``(x0, y0, x1, y1)`` holding only valid pixels.

    Greedy: repeatedly drop the border row or column with the largest share of invalid
    pixels until none is left.
    """
    invalid = ~valid
    y0, x0 = 0, 0
    y1, x1 = invalid.shape
    remaining = int(invalid.sum())
    while remaining > 0:
        sides = {
            "top": invalid[y0, x0:x1].sum() / (x1 - x0),
            "bottom": invalid[y1 - 1, x0:x1].sum() / (x1 - x0),
            "left": invalid[y0:y1, x0].sum() / (y1 - y0),
            "right": invalid[y0:y1, x1 - 1].sum() / (y1 - y0),
        }
        side = max(sides, key=sides.get)
        if side == "top":
            remaining -= int(invalid[y0, x0:x1].sum())
            y0 += 1
        elif side == "bottom":
            remaining -= int(invalid[y1 - 1, x0:x1].sum())
            y1 -= 1
        elif side == "left":
            remaining -= int(invalid[y0:y1, x0].sum())
            x0 += 1
        else:
            remaining -= int(invalid[y0:y1, x1 - 1].sum())
            x1 -= 1
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise DataError("undistortion leaves no valid image area; check the distortion parameters")
    return x0, y0, x1, y1


class Undistorter:
    """Maps photos of one camera (at one resolution) to a pinhole camera.

    Attributes:
        K: ``[3, 3]`` intrinsics of the undistorted, cropped image.
        width, height: its size.
    """

    def __init__(self, intr: CameraIntrinsics) -> None:
        import cv2

        self.source = intr
        if not intr.is_distorted:
            self.K, self.width, self.height = intr.K(), intr.width, intr.height
            self._maps = None
            return
        size = (intr.width, intr.height)
        K_cv = _to_cv(intr.K())
        D = np.asarray(intr.dist, dtype=np.float64)
        if intr.model == "fisheye":
            new_K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K_cv, D, size, np.eye(3), balance=0.0)
        else:
            new_K, _ = cv2.getOptimalNewCameraMatrix(K_cv, D, size, 0.0, size)
        # OpenCV scales the two axes separately to fill the frame; one common zoom keeps
        # the camera's pixel aspect ratio (zooming in never adds invalid pixels).
        zoom = max(new_K[0, 0] / K_cv[0, 0], new_K[1, 1] / K_cv[1, 1])
        new_K[0, 0], new_K[1, 1] = zoom * K_cv[0, 0], zoom * K_cv[1, 1]
        if intr.model == "fisheye":
            mapx, mapy = cv2.fisheye.initUndistortRectifyMap(K_cv, D, np.eye(3), new_K, size, cv2.CV_32FC1)
        else:
            mapx, mapy = cv2.initUndistortRectifyMap(K_cv, D, None, new_K, size, cv2.CV_32FC1)
        ones = np.ones((intr.height, intr.width), np.float32)
        valid = cv2.remap(ones, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.999
        x0, y0, x1, y1 = _valid_rectangle(valid)
        self._maps = (mapx[y0:y1, x0:x1].copy(), mapy[y0:y1, x0:x1].copy())
        self._K_cv_src, self._D, self._new_K_cv = K_cv, D, new_K
        self._offset = np.array([x0, y0], dtype=np.float64)
        K = _from_cv(new_K)
        K[0, 2] -= x0
        K[1, 2] -= y0
        self.K, self.width, self.height = K, x1 - x0, y1 - y0

    def image(self, img: np.ndarray) -> np.ndarray:
        """Undistort an image ``[H, W, C]`` of the source size (bilinear)."""
        if self._maps is None:
            return img
        import cv2

        return cv2.remap(img, *self._maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Undistort a boolean mask ``[H, W]`` (nearest neighbour)."""
        if self._maps is None:
            return mask
        import cv2

        out = cv2.remap(mask.astype(np.uint8), *self._maps, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        return out.astype(bool)

    def depth(self, depth: np.ndarray) -> np.ndarray:
        """Undistort a depth map ``[H, W]`` (nearest neighbour: no depths between an edge's two
        sides; 0, no depth, outside the photo). Depth is along the camera's axis, which
        undistortion keeps."""
        if self._maps is None:
            return depth
        import cv2

        return cv2.remap(depth, *self._maps, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Pixel positions ``[M, 2]`` in the photo -> positions in the undistorted image."""
        if self._maps is None:
            return np.asarray(xy, dtype=np.float64)
        import cv2

        src = (np.asarray(xy, dtype=np.float64) - 0.5).reshape(-1, 1, 2)
        if self.source.model == "fisheye":
            und = cv2.fisheye.undistortPoints(
                src,
                self._K_cv_src,
                self._D,
                P=self._new_K_cv,
                criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12),
            )
        else:
            und = cv2.undistortPoints(
                src,
                self._K_cv_src,
                self._D,
                P=self._new_K_cv,
                criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12),
            )
        return und.reshape(-1, 2) + 0.5 - self._offset
