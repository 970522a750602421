"""``serve-app smoke URL``: one text and one image request against a running endpoint, streamed,
printing each answer, its token counts and timings (time to first token, total). Exit 1 if either
fails. The image is generated here (a 448×336 PNG), so the check needs nothing but the endpoint."""

from __future__ import annotations

import base64
import io
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


def _image_uri() -> str:
    from PIL import Image

    from serve_app.dev.synth_media import photo_like

    buf = io.BytesIO()
    Image.fromarray(photo_like(448, 336, seed=1)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class SmokeResult:
    name: str
    status: int = 0
    request_id: str = ""
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    total_s: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        if self.error:
            return f"{self.name}: FAILED ({self.status}) {self.error}"
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "-"
        return (f"{self.name}: {self.text!r}\n  id={self.request_id} prompt_tokens={self.prompt_tokens} "
                f"completion_tokens={self.completion_tokens} ttft={ttft} total={self.total_s * 1000:.0f} ms")


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def one_request(client: httpx.Client, base: str, name: str, model: str, content: Any, max_tokens: int) -> SmokeResult:
    res = SmokeResult(name)
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": content}]}
    t0 = time.monotonic()
    with client.stream("POST", f"{base}/chat/completions", json=body) as r:
        res.status = r.status_code
        res.request_id = r.headers.get("x-request-id", "")
        if r.status_code != 200:
            r.read()
            res.error = r.text[:500]
            res.total_s = time.monotonic() - t0
            return res
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                res.error = json.dumps(chunk["error"])
                continue
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and res.ttft_s is None:
                    res.ttft_s = time.monotonic() - t0
                res.text += piece
            if chunk.get("usage"):
                res.prompt_tokens = chunk["usage"]["prompt_tokens"]
                res.completion_tokens = chunk["usage"]["completion_tokens"]
            res.request_id = chunk.get("id", res.request_id)
    res.total_s = time.monotonic() - t0
    return res


def run_smoke(url: str, *, model: str | None = None, api_key: str | None = None, max_tokens: int = 16,
              timeout: float = 120.0, out=sys.stdout) -> int:
    base = _base(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=timeout, headers=headers) as client:
        if model is None:
            r = client.get(f"{base}/models")
            if r.status_code != 200:
                print(f"GET {base}/models: {r.status_code} {r.text[:300]}", file=out)
                return 1
            model = r.json()["data"][0]["id"]
        print(f"model: {model} at {base}", file=out)
        results = [
            one_request(client, base, "text", model, "Say hello in five words.", max_tokens),
            one_request(client, base, "image", model, [
                {"type": "image_url", "image_url": {"url": _image_uri()}},
                {"type": "text", "text": "Describe this picture."}], max_tokens),
        ]
    for res in results:
        print(res.line(), file=out)
    return 0 if all(r.status == 200 and not r.error for r in results) else 1
