"""Fast tests of bench/worst_requests.py's generated inputs: they are what the table says they are."""

from __future__ import annotations

import io
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

import worst_requests as wr  # noqa: E402


def test_the_delta_gif_declares_full_frames():
    from serve_app.media.video import plan_video

    data = wr.delta_gif(256, 40)
    plan = plan_video(data, {})
    assert (plan.index.width, plan.index.height, plan.index.num_frames) == (256, 256, 40)
    assert len(data) < 40_000


def test_the_webp_declares_what_it_says():
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert Image.open(io.BytesIO(wr.webp_declaring(16383, 6103))).size == (16383, 6103)
