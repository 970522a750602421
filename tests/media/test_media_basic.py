"""Basic end-to-end behaviour of serve_app.media (data URIs, local files, video, refusals)."""

import base64
import os

import numpy as np
import pytest
from PIL import Image

from serve_app.media import LoadedImage, LoadedVideo, MediaConfig, MediaError, MediaLoader, MediaSpec, smart_resize
from serve_app.dev import synth_media as synth
from serve_app.media.tuning import library_threads  # noqa: E402


@pytest.fixture(autouse=True)
def _one_library_thread():
    """MediaLoader sets torch/OpenCV to 1 thread (MediaConfig.library_threads); restore afterwards so
    other test modules in this process keep their settings."""
    with library_threads(1):
        yield



def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture
async def loader():
    ld = MediaLoader(MediaConfig())
    yield ld
    await ld.aclose()


def test_smart_resize_known_values():
    assert smart_resize(3000, 4000, max_pixels=1280 * 28 * 28) == (840, 1148)
    assert smart_resize(3000, 4000) == (2996, 4004)
    assert smart_resize(1080, 1920, max_pixels=1280 * 28 * 28) == (728, 1316)
    assert smart_resize(10, 10) == (56, 56)  # min_pixels branch
    with pytest.raises(MediaError, match="aspect ratio"):
        smart_resize(10, 2011)
    assert isinstance(MediaError("x"), ValueError)


async def test_image_data_uri(loader):
    [img] = await loader.load([MediaSpec("image", data_uri(synth.jpeg(640, 480)), {}, "messages[0].content[0]")])
    assert isinstance(img, LoadedImage)
    assert img.image.mode == "RGB" and img.image.size == (644, 476)
    assert len(img.uuid) == 64


async def test_image_options_and_uuid_depend_on_options(loader):
    src = data_uri(synth.jpeg(640, 480))
    a, b, c = await loader.load([
        MediaSpec("image", src, {"max_pixels": 256 * 28 * 28}, "m[0]"),
        MediaSpec("image", src, {"resized_height": 100, "resized_width": 200}, "m[1]"),
        MediaSpec("image", src, {"max_pixels": 256 * 28 * 28}, "m[2]"),
    ])
    assert a.image.size[0] * a.image.size[1] <= 256 * 28 * 28
    assert b.image.size == (196, 112)
    assert a.uuid == c.uuid != b.uuid


async def test_video_data_uri(loader):
    v = synth.video(320, 240, 45, fps=30)
    [vid] = await loader.load([MediaSpec("video", data_uri(v, "video/mp4"), {}, "m[0]")])
    assert isinstance(vid, LoadedVideo)
    assert vid.frames.dtype == np.uint8 and vid.frames.shape[0] % 2 == 0 and vid.frames.shape[-1] == 3
    assert vid.metadata["total_num_frames"] == 45
    assert vid.metadata["frames_indices"] == [0, 15, 29, 44]


async def test_frame_list_padded_to_even(loader):
    frames = [data_uri(synth.jpeg(200, 150, seed=i)) for i in range(3)]
    [vid] = await loader.load([MediaSpec("video", frames, {}, "m[0]")])
    assert vid.frames.shape[0] == 4
    assert np.array_equal(vid.frames[3], vid.frames[2])


async def test_local_paths_only_under_roots(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(synth.jpeg(100, 80))
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(synth.jpeg(100, 80))
    os.symlink(outside, root / "link.jpg")
    ld = MediaLoader(MediaConfig(allowed_local_roots=[str(root)]))
    [img] = await ld.load([MediaSpec("image", str(root / "a.jpg"), {}, "m[0]")])
    assert img.image.mode == "RGB"
    [img] = await ld.load([MediaSpec("image", f"file://{root}/a.jpg", {}, "m[0]")])
    for bad in (str(outside), str(root / "link.jpg"), f"{root}/../secret.jpg", "relative.jpg"):
        with pytest.raises(MediaError, match=r"^m\[1\]: "):
            await ld.load([MediaSpec("image", bad, {}, "m[1]")])
    await ld.aclose()
    with pytest.raises(MediaError, match="not allowed"):
        await MediaLoader(MediaConfig()).load([MediaSpec("image", str(root / "a.jpg"), {}, "m[0]")])


async def test_loopback_refused_by_default(loader):
    for url in ("http://127.0.0.1:9/x.jpg", "http://2130706433/x.jpg", "http://[::1]/x.jpg", "http://localhost/x"):
        with pytest.raises(MediaError, match=r"^m\[0\]: .*refused"):
            await loader.load([MediaSpec("image", url, {}, "m[0]")])


async def test_rgba_on_white(loader):
    arr = np.zeros((64, 64, 4), np.uint8)
    arr[..., 0] = 255  # red, fully transparent -> white
    png = synth.encode_image(Image.fromarray(arr, "RGBA"), "PNG")
    [img] = await loader.load([MediaSpec("image", data_uri(png, "image/png"), {}, "m[0]")])
    assert np.asarray(img.image).min() == 255


async def test_loaded_image_array_and_pickle(loader):
    import pickle

    [img] = await loader.load([MediaSpec("image", data_uri(synth.jpeg(1000, 800)), {"max_pixels": 128 * 28 * 28}, "m[0]")])
    arr = img.array
    assert arr.dtype == np.uint8 and arr.shape == (img.size[1], img.size[0], 3) and not arr.flags.writeable
    assert np.array_equal(np.asarray(img.image), arr)
    back = pickle.loads(pickle.dumps(img))
    assert back.uuid == img.uuid and np.array_equal(back.array, arr) and back.image.mode == "RGB"
