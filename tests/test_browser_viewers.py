"""One model exported to every format looks the same in a real web viewer: Spark (pinned in
benchmarks/web/package.json) renders each file in headless Chromium from one camera, and
every screenshot must match the ``.ply`` one, while the same model with y and z negated (the
RDF <-> RUB flip) must not. The pipeline is ``benchmarks/browser_viewers.py``; screenshots
are kept in ``$SPLATKIT_TEST_ARTIFACTS/browser_viewers`` (default ``test-artifacts/``).

Threshold, from measurement (Spark 2.2.0, three 0.187.0, Chromium 156 on SwiftShader,
512x512, this file's 1,200 Gaussians): the lossy formats scored 51.1 (``.spz``) to 58.1 dB
(``.compressed.ply``) against the ``.ply``, ``.ksplat`` 92.6 dB and a reload of the ``.ply``
was pixel-identical; the flipped model scored 16.3 dB, as did an ``.spz`` written in RUB axes
(``spz_axes="rub"``, i.e. a file Spark reads with the wrong axes). With 4,000 Gaussians: 50.8
to 59.3 dB, flipped 15.1 dB. 40 dB keeps 10 dB of margin below the worst format and sits more
than 20 dB above the flipped model.
"""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("browser_viewers", ROOT / "benchmarks" / "browser_viewers.py")
bv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bv)

PSNR_MIN = 40.0  # dB, whole 512x512 screenshot against the .ply one (module docstring)
FLIPPED_MAX = 25.0  # dB: the flipped model must score below this

pytestmark = [
    pytest.mark.skipif(bv.CHROMIUM is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium)"),
    pytest.mark.skipif(
        not (bv.WEB / "node_modules" / "@sparkjsdev" / "spark" / "package.json").is_file(),
        reason="benchmarks/web/node_modules is missing: run `npm ci --prefix benchmarks/web`",
    ),
]


def test_every_format_renders_like_the_ply_in_spark():
    pytest.importorskip("websockets")
    artifacts = Path(os.environ.get("SPLATKIT_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser_viewers"
    report = bv.run(per_cluster=300, size=512, out=artifacts)
    formats = report["formats"]
    expected = {".ply", ".splat", ".spz", ".compressed.ply", ".ksplat", ".sog", "flipped.ply", "ply (reloaded)"}
    assert expected <= set(formats), sorted(formats)
    summary = {k: (v["psnr_vs_ply"], v["landmarks"]) for k, v in formats.items()}
    for key, entry in formats.items():
        assert entry["splats_loaded"] == report["gaussians"], (key, entry)
        # The splat is drawn, where the camera puts each cluster, in that cluster's colour.
        assert entry["foreground_fraction"] > 0.03, (key, entry)
        assert all(entry["landmarks"].values()), (key, summary)
        if key != "flipped.ply":
            assert entry["psnr_vs_ply"] >= PSNR_MIN, (key, summary)
    assert formats["flipped.ply"]["psnr_vs_ply"] < FLIPPED_MAX, summary
    # The flipped model's clusters are not where the unflipped ones are.
    assert not all(formats["flipped.ply"]["landmarks_at_unflipped_places"].values()), formats["flipped.ply"]
