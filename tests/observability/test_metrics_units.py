"""Metrics bookkeeping and request ids (pure, milliseconds)."""

import asyncio
import base64
import io

import pytest
from PIL import Image

from serve_app.engine.contract import ChoiceDelta, Delta, EngineRequest
from serve_app.media.config import MediaConfig
from serve_app.media.errors import AddressRefused, MediaError, MediaTooLarge
from serve_app.media.loader import MediaLoader
from serve_app.media.spec import MediaSpec
from serve_app.observability import metrics, request_ids
from serve_app.observability.request_metrics import RequestObserver


@pytest.fixture
def sink():
    s = metrics.ListSink()
    previous = metrics.use_sink(s)
    yield s
    metrics.use_sink(previous)


def test_request_id_from_header_or_generated():
    assert request_ids.request_id("abc-123.x:y_z") == "abc-123.x:y_z"
    gen = request_ids.request_id(None)
    assert gen.startswith("chatcmpl-") and gen != request_ids.request_id("")
    with pytest.raises(request_ids.InvalidRequestIdError, match="longer than 128"):
        request_ids.request_id("a" * 129)
    request_ids.request_id("a" * 128)
    for bad in ("has space", "new\nline", "-leading", "ü", "a/b"):
        with pytest.raises(request_ids.InvalidRequestIdError):
            request_ids.request_id(bad)


def test_observer_records_ttft_tpot_tokens_and_status(sink):
    now = [100.0]
    obs = RequestObserver(clock=lambda: now[0])
    now[0] = 100.5
    obs.on_delta(Delta([ChoiceDelta(0, "a", num_tokens=1)], prompt_tokens=7))
    now[0] = 101.5
    obs.on_delta(Delta([ChoiceDelta(0, "bcd", num_tokens=3)], prompt_tokens=7, finished=True))
    obs.finish(200)
    obs.finish(500)  # once only
    stages = {t["stage"]: v for kind, n, v, t in sink.records if n == metrics.STAGE_SECONDS}
    assert stages == {"e2e": 1.5, "ttft": 0.5, "tpot": pytest.approx(1.0 / 3)}
    assert sink.total(metrics.REQUESTS, status="200") == 1 and sink.count(metrics.REQUESTS) == 1
    assert sink.total(metrics.TOKENS, kind="prompt") == 7 and sink.total(metrics.TOKENS, kind="completion") == 4


def test_observer_failed_request_counts_status_only(sink):
    obs = RequestObserver()
    obs.finish(400)
    assert sink.total(metrics.REQUESTS, status="400") == 1
    assert sink.count(metrics.STAGE_SECONDS, stage="ttft") == 0 and sink.count(metrics.TOKENS) == 0


def test_unknown_labels_are_refused():
    with pytest.raises(ValueError):
        metrics.observe_stage("nope", 1.0)
    with pytest.raises(ValueError):
        metrics.count_tokens("audio", 1)


def test_media_error_reasons_are_a_fixed_set():
    assert metrics.media_error_reason(AddressRefused("x: 10.0.0.1 refused")) == "address_refused"
    assert metrics.media_error_reason(MediaTooLarge("x")) == "too_large"
    assert metrics.media_error_reason(MediaError("http://a/b: timed out after 5s")) == "timeout"
    assert metrics.media_error_reason(MediaError("http://secret/path?k=v: whatever")) == "invalid"


def test_cache_counter_reports_differences():
    class C:
        hits, misses = 0, 0

    s = metrics.ListSink()
    previous = metrics.use_sink(s)
    try:
        c, counter = C(), metrics.CacheCounter()
        c.hits, c.misses = 2, 3
        counter.report(c)
        c.hits = 5
        counter.report(c)
    finally:
        metrics.use_sink(previous)
    assert s.total(metrics.MEDIA_CACHE, result="hit") == 5 and s.total(metrics.MEDIA_CACHE, result="miss") == 3


def _png_uri(w=64, h=48) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_loader_records_fetch_decode_bytes_and_errors(sink):
    loader = MediaLoader(MediaConfig())
    uri = _png_uri()
    asyncio.run(loader.load([MediaSpec(kind="image", source=uri, options={}, where="m[0]")]))
    assert sink.count(metrics.STAGE_SECONDS, stage="media_fetch") == 1
    assert sink.count(metrics.STAGE_SECONDS, stage="media_decode") == 1
    assert sink.count(metrics.STAGE_SECONDS, stage="media_resize") == 1  # 64x48 -> 56x56
    assert sink.total(metrics.MEDIA_BYTES, source="data") > 100
    with pytest.raises(MediaError):
        asyncio.run(loader.load([MediaSpec(kind="image", source="data:image/png;base64,AAAA", options={},
                                           where="m[1]")]))
    assert sink.count(metrics.MEDIA_ERRORS) == 1


def test_resize_time_is_tallied_per_thread_and_counted_once_when_nested():
    import numpy as np

    from serve_app.media import resize

    rgb = np.zeros((480, 640, 3), np.uint8)
    resize.resize_rgb(rgb, (320, 240))  # outside a tally: nothing to count into, nothing breaks
    with resize.tally() as outer:
        resize.resize_rgb(rgb, (320, 240))
        with resize.tally() as inner:
            resize.resize_video_frame(rgb, (224, 168))  # -> resize_torch inside: one resize, not two
        resize.resize_torchvision(rgb, (224, 168))
    assert (outer.calls, inner.calls) == (2, 1)
    assert outer.seconds > 0 and inner.seconds > 0


def test_loader_times_a_videos_frame_resizes_as_one_resize_stage(sink):
    from serve_app.dev import synth_media

    loader = MediaLoader(MediaConfig())
    uri = "data:video/mp4;base64," + base64.b64encode(synth_media.video(160, 120, 8)).decode()
    (video,) = asyncio.run(loader.load([MediaSpec(kind="video", source=uri, options={"nframes": 4}, where="m[0]")]))
    assert video.frames.shape[0] == 4
    decode = [v for _, n, v, t in sink.records if n == metrics.STAGE_SECONDS and t["stage"] == "media_decode"]
    resize = [v for _, n, v, t in sink.records if n == metrics.STAGE_SECONDS and t["stage"] == "media_resize"]
    assert len(decode) == 1 and len(resize) == 1 and resize[0] > 0 and decode[0] >= 0


def test_engine_request_carries_send_time():
    assert EngineRequest("r", [], {}).sent_at is None
