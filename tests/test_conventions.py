"""The conventions module: quaternions, camera matrices, SH basis and layout."""

import math

import torch

from splatkit.splat.conventions import (
    c2w_to_viewmat,
    camera_centers,
    look_at_c2w,
    opengl_to_opencv_c2w,
    quat_to_rotmat,
    rotmat_to_quat,
)
from splatkit.splat.sh import eval_sh_bases, f_rest_to_shN, rgb_to_sh, sh_to_color, sh_to_rgb, shN_to_f_rest


def test_quaternions_are_wxyz_and_round_trip():
    # 90 degrees about +Z in wxyz order maps +X to +Y.
    q = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]], dtype=torch.float64)
    R = quat_to_rotmat(q)[0]
    torch.testing.assert_close(
        R @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64)
    )
    qs = torch.randn(500, 4, dtype=torch.float64)
    Rs = quat_to_rotmat(qs)
    torch.testing.assert_close(Rs @ Rs.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(500, 3, 3))
    torch.testing.assert_close(torch.linalg.det(Rs), torch.ones(500, dtype=torch.float64))
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(Rs)), Rs)


def test_viewmat_inverts_c2w_and_opengl_flip():
    eye = torch.tensor([3.0, -2.0, 1.0])
    c2w = look_at_c2w(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    vm = c2w_to_viewmat(c2w)
    torch.testing.assert_close(vm @ c2w, torch.eye(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(camera_centers(vm[None])[0], eye, atol=1e-6, rtol=0)
    # OpenCV: the target is straight ahead (+Z), world up appears as image up (-Y).
    target_cam = vm @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert target_cam[2] > 0 and abs(target_cam[0]) < 1e-6 and abs(target_cam[1]) < 1e-6
    up_cam = vm[:3, :3] @ torch.tensor([0.0, 0.0, 1.0])
    assert up_cam[1] < 0
    gl = opengl_to_opencv_c2w(c2w)
    assert torch.equal(opengl_to_opencv_c2w(gl), c2w)
    # An OpenGL camera looks down its -Z: after conversion it looks down +Z.
    torch.testing.assert_close(gl[:3, 2], -c2w[:3, 2])


def test_sh_basis_is_orthonormal():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1)
    Y = eval_sh_bases(3, d)
    gram = (Y.T @ Y) * (4 * math.pi / d.shape[0])
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.02, rtol=0)


def test_sh_colour_conventions():
    rgb = torch.rand(10, 3)
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(rgb)), rgb)
    coeffs = torch.zeros(10, 16, 3)
    coeffs[:, 0] = rgb_to_sh(rgb)
    dirs = torch.randn(10, 3)
    torch.testing.assert_close(sh_to_color(3, dirs, coeffs), rgb)
    # +0.5 offset then clamp at zero.
    coeffs[:, 0] = -10.0
    assert torch.equal(sh_to_color(0, dirs, coeffs), torch.zeros(10, 3))


def test_f_rest_is_channel_major():
    shN = torch.arange(2 * 15 * 3, dtype=torch.float32).reshape(2, 15, 3)
    f_rest = shN_to_f_rest(shN)
    assert torch.equal(f_rest[0, :15], shN[0, :, 0])  # all R first
    assert torch.equal(f_rest[0, 15:30], shN[0, :, 1])
    assert torch.equal(f_rest_to_shN(f_rest), shN)


def test_axis_angle_is_right_handed_and_matches_rodrigues():
    import math

    from splatkit.splat.conventions import axis_angle_to_rotmat

    R = axis_angle_to_rotmat(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0]).double())
    v = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    k, th = v / v.norm(), float(v.norm())
    K = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    rodrigues = torch.eye(3, dtype=torch.float64) + math.sin(th) * K + (1 - math.cos(th)) * K @ K
    assert torch.allclose(axis_angle_to_rotmat(v), rodrigues, atol=1e-12)
