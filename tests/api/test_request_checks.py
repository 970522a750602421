"""Every client error is answered by the ingress's pure checks, before any replica hop."""

from __future__ import annotations

import pytest

from serve_app.api.protocol import ChatCompletionRequest
from serve_app.api.request_checks import check_request
from serve_app.app_config import parse_app_config
from serve_app.errors import InvalidRequestError

CONFIG = parse_app_config({"model": {"path": "/m", "served_name": "m"}, "media": {"max_items_per_request": 2}})
PNG = "data:image/png;base64,iVBORw0KGgo="


def _req(*parts):
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}]})


@pytest.fixture(autouse=True)
def no_media_loader(monkeypatch):
    """The checks are pure: no MediaLoader (and so no thread pool) is built."""
    from serve_app.media import loader

    def refuse(*a, **kw):
        raise AssertionError("check_request built a MediaLoader")

    monkeypatch.setattr(loader.MediaLoader, "__init__", refuse)


@pytest.mark.parametrize("part, fragment", [
    ({"type": "image_url", "image_url": {"url": PNG}, "max_pixels": 10**12}, "option max_pixels must be <="),
    ({"type": "image", "image": PNG, "resized_height": 56}, "resized_height and resized_width must be given together"),
    ({"type": "video", "video": PNG, "fps": 2, "nframes": 4}, "only one of fps and nframes"),
    ({"type": "video", "video": []}, "the frame list is empty"),
    ({"type": "image", "image": "ftp://host/x.png"}, "unsupported URL scheme"),
    ({"type": "image", "image": "/data/x.png"}, "local file paths are not allowed"),
])
def test_bad_media_options_are_400s_at_the_ingress(part, fragment):
    with pytest.raises(InvalidRequestError) as ei:
        check_request(_req(part), CONFIG)
    assert ei.value.status_code == 400
    assert ei.value.message.startswith("messages[0].content[0]: ") and fragment in ei.value.message


def test_one_item_count_check():
    image = {"type": "image_url", "image_url": {"url": PNG}}
    assert len(check_request(_req(image, image), CONFIG).plan.media) == 2
    with pytest.raises(InvalidRequestError, match="at most 2"):
        check_request(_req(image, image, image), CONFIG)


def test_engine_request_carries_the_plan_and_sampling():
    v = check_request(_req({"type": "image", "image": PNG}), CONFIG)
    er = v.engine_request("chatcmpl-1", stream=True)
    assert er.request_id == "chatcmpl-1" and er.stream is True and er.n == 1
    assert er.messages == v.plan.template_messages and er.sampling == v.sampling and er.top_logprobs is None
