"""The batch job's per-request steps and driver logic, without a Ray cluster: request validation
as online, the shared MediaPreparer, the engine step against a fake engine, the bounded dispatch
loop against a fake Ray, config loading and the CLI paths that need no Ray."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pathlib
import types

import numpy as np
import pytest
import yaml
from PIL import Image

from serve_app.batch import io as batch_io, job as batch, steps as batch_steps
from serve_app.app_config import parse_app_config
from serve_app import errors
from serve_app.errors import EngineError, InvalidRequestError
from serve_app.engine.contract import ChoiceDelta, Delta, EngineRequest
from serve_app.preprocess.prepared import PreparedMedia

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "qwen2.5-vl-tiny"


def config(**media):
    return parse_app_config({"model": {"served_name": MODEL}, "engine": {"accelerator": "CPU"},
                             "serving": {"max_n": 2}, "media": media})


def png_uri(w=60, h=40):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def line(cid, content="hi", **body):
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **body}})


# ----------------------------------------------------------------------------- validation
def test_validate_body_as_online():
    v = batch_steps.validate_body({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                   "max_tokens": 3, "logprobs": True, "top_logprobs": 2}, config())
    assert v.sampling["max_tokens"] == 3 and v.top_logprobs == 2 and not v.plan.media


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "not served here"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "stream"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n = 3"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "bogus": 1}, 400, "bogus"),
])
def test_validate_body_errors(body, status, fragment):
    with pytest.raises(batch_steps.ServeAppError) as ei:
        batch_steps.validate_body(body, config())
    assert ei.value.status_code == status and fragment in ei.value.message


def test_classify_exception_unwraps_causes():
    from serve_app.media.errors import MediaError

    wrapped = RuntimeError("ray wrapper")
    wrapped.cause = MediaError("messages[0].content[0]: broken")
    err = errors.to_serve_error(wrapped)
    assert isinstance(err, InvalidRequestError) and "broken" in err.message
    assert errors.to_serve_error(ValueError("x")).status_code == 500


# ----------------------------------------------------------------------------- preprocessing
class FakePreparer:
    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    async def prepare(self, plan, token_budget=None):
        self.calls.append(plan)
        if self.fail:
            raise self.fail
        return PreparedMedia(images=[np.zeros((28, 28, 3), np.uint8)], image_uuids=["u"])


def test_preprocessor_text_only_skips_media_work_like_online():
    pre = batch_steps.BatchPreprocessor(config(), preparer=FakePreparer())
    item = asyncio.run(pre.prepare_line(line("a", max_tokens=2).encode(), 1))
    assert isinstance(item, batch_steps.PreparedItem) and item.media is None
    assert item.custom_id == "a" and item.request.request_id.startswith("chatcmpl-")
    assert item.request.sampling["max_tokens"] == 2 and item.request.stream is False
    assert pre._preparer.calls == []


def test_preprocessor_media_and_errors_become_records():
    from serve_app.media.errors import MediaError

    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    pre = batch_steps.BatchPreprocessor(config(), preparer=FakePreparer())
    item = asyncio.run(pre.prepare_line(line("m", image), 1))
    assert isinstance(item.media, PreparedMedia) and len(pre._preparer.calls) == 1
    bad = batch_steps.BatchPreprocessor(config(), preparer=FakePreparer(MediaError("messages[0].content[0]: bad")))
    rec = asyncio.run(bad.prepare_line(line("m", image), 1))
    assert rec["custom_id"] == "m" and rec["response"]["status_code"] == 400
    assert rec["response"]["body"]["error"]["message"] == "messages[0].content[0]: bad"
    rec = asyncio.run(pre.prepare_line(b"{broken", 7))
    assert rec["custom_id"] is None and rec["error"]["line"] == 7


def test_preprocessor_uses_the_shared_prompt_preparer(tiny_model_dir):
    """The real MediaPreparer on the tiny model: a decoded, resized image, and the messages the
    engine renders with the model's chat template (one placeholder per image)."""
    from transformers import AutoTokenizer

    from serve_app.engine.prompting import chat_renderer

    pre = batch_steps.BatchPreprocessor(config())
    content = [{"type": "image_url", "image_url": {"url": png_uri(300, 200)}}, {"type": "text", "text": "what"}]
    item = asyncio.run(pre.prepare_line(line("img", content), 1))
    assert isinstance(item.media, PreparedMedia)
    render = chat_renderer(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert "<|vision_start|><|image_pad|><|vision_end|>" in render(item.request.messages)
    (img,) = item.media.images
    assert img.dtype == np.uint8 and img.shape[0] % 28 == 0 and img.shape[1] % 28 == 0
    bad = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    rec = asyncio.run(pre.prepare_line(line("bad", bad), 2))
    assert rec["response"]["status_code"] == 400 and "messages[0].content[0]" in rec["response"]["body"]["error"]["message"]


def test_prompt_preparer_warmup_is_best_effort(tiny_model_dir, caplog):
    """A decoder that cannot be imported (simplejpeg was missing on the GPU machine) must not stop
    a Preprocessor replica from starting: only the requests that need it fail."""
    from serve_app.preprocess.preparer import MediaPreparer

    prep = MediaPreparer(config())

    def broken():
        raise ModuleNotFoundError("No module named 'simplejpeg'")

    prep._loader.warmup = broken
    with caplog.at_level("WARNING", logger="serve_app.preprocess.preparer"):
        prep.warmup()
    assert "simplejpeg" in caplog.text


# ----------------------------------------------------------------------------- engine step
class FakeEngine:
    def __init__(self, fail=None, healthy=True):
        self.fail, self.healthy, self.calls = fail, healthy, []

    async def generate(self, request, media=None):
        self.calls.append((request, media))
        if self.fail:
            raise self.fail
        yield Delta(prompt_tokens=7, finished=True,
                    choices=[ChoiceDelta(i, f"t{i}", 2, "length", token_ids=[1, 2]) for i in range(request.n)])

    async def check_health(self):
        if not self.healthy:
            raise RuntimeError("engine dead")


def item(n=1):
    return batch_steps.PreparedItem("a", EngineRequest("chatcmpl-x", [], {"n": n, "max_tokens": 2}))


def test_run_on_engine_success_record():
    eng = FakeEngine()
    rec = asyncio.run(batch_steps.run_on_engine(eng, item(2), MODEL, clock=lambda: 123))
    assert eng.calls[0][0].stream is False  # non-streaming, final output only
    body = rec["response"]["body"]
    assert rec["custom_id"] == "a" and rec["response"]["status_code"] == 200
    assert rec["response"]["request_id"] == body["id"] == "chatcmpl-x"
    assert body["object"] == "chat.completion" and body["model"] == MODEL and body["created"] == 123
    assert [c["message"]["content"] for c in body["choices"]] == ["t0", "t1"]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


def test_run_on_engine_errors():
    rec = asyncio.run(batch_steps.run_on_engine(FakeEngine(InvalidRequestError("too long")), item(), MODEL))
    assert rec["response"]["status_code"] == 400 and rec["response"]["body"]["error"]["message"] == "too long"
    rec = asyncio.run(batch_steps.run_on_engine(FakeEngine(EngineError("boom")), item(), MODEL))
    assert rec["response"]["status_code"] == 500  # the engine is still healthy: this request failed
    with pytest.raises(batch_steps.EngineUnavailable, match="engine dead"):
        asyncio.run(batch_steps.run_on_engine(FakeEngine(EngineError("boom"), healthy=False), item(), MODEL))
    passthrough = {"custom_id": "x", "response": None, "error": {}}
    assert asyncio.run(batch_steps.run_on_engine(FakeEngine(), passthrough, MODEL)) is passthrough


# ----------------------------------------------------------------------------- dispatch loop (fake Ray)
class _Ref:
    def __init__(self, fn):
        self.fn = fn


class _FakeRay:
    class exceptions:
        class RayActorError(Exception):
            def __init__(self, actor_id):
                self.actor_id = actor_id

        class RayTaskError(Exception):
            pass

    def __init__(self):
        self.outstanding = 0
        self.max_outstanding = 0

    def get(self, ref):
        self.outstanding -= 1
        return ref.fn()

    def wait(self, refs, num_returns, timeout):
        return refs[:num_returns], refs[num_returns:]


class _Method:
    def __init__(self, fake, fn, counts):
        self.fake, self.fn, self.counts = fake, fn, counts

    def remote(self, *args):
        if self.counts:
            self.fake.outstanding += 1
            self.fake.max_outstanding = max(self.fake.max_outstanding, self.fake.outstanding)
        return _Ref(lambda: self.fn(*[a.fn() if isinstance(a, _Ref) else a for a in args]))


def test_drive_keeps_a_bounded_number_in_flight(tmp_path, capsys):
    fake = _FakeRay()
    pre = batch_steps.BatchPreprocessor(config(), preparer=FakePreparer())
    eng = FakeEngine()
    pre_actor = types.SimpleNamespace(prepare_line=_Method(fake, lambda raw, n: asyncio.run(pre.prepare_line(raw, n)),
                                                           False))
    eng_actor = types.SimpleNamespace(run=_Method(fake, lambda it: asyncio.run(batch_steps.run_on_engine(eng, it, MODEL)),
                                                  True))
    source = iter([(i, f"c{i}", line(f"c{i}", max_tokens=1).encode()) for i in range(1, 26)])
    out = tmp_path / "out.jsonl"
    progress = batch_io.Progress(total=25)
    with batch_io.JsonlAppender(out) as w:
        batch._drive(fake, source, batch._Pool([pre_actor, pre_actor]), batch._Pool([eng_actor]), set(),
                     max_in_flight=4, writer=w, progress=progress, progress_interval=0.0)
    assert fake.max_outstanding == 4
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in recs) == sorted(f"c{i}" for i in range(1, 26))
    assert all(r["response"]["status_code"] == 200 for r in recs) and progress.ok == 25
    assert "[batch] progress" in capsys.readouterr().out


def test_collect_maps_actor_deaths():
    fake = _FakeRay()

    def dies(actor):
        def f():
            raise fake.exceptions.RayActorError(actor)
        return _Ref(f)

    fake.outstanding = 3
    with pytest.raises(batch.BatchAborted, match="engine actor died"):
        batch._collect(fake, dies("eng1"), "a", 1, {"eng1"})
    rec = batch._collect(fake, dies("pre1"), "a", 1, {"eng1"})
    assert rec["custom_id"] == "a" and rec["response"]["status_code"] == 500
    assert "preprocessing worker died" in rec["response"]["body"]["error"]["message"]

    def unavailable():
        e = fake.exceptions.RayTaskError("x")
        e.cause = batch_steps.EngineUnavailable("dead")
        raise e

    with pytest.raises(batch.BatchAborted, match="engine unavailable"):
        batch._collect(fake, _Ref(unavailable), "a", 1, set())


# ----------------------------------------------------------------------------- config and CLI
def test_load_app_reads_the_serve_config():
    app = batch.load_app(str(ROOT / "configs" / "qwen2.5-vl-72b-awq-tp4.yaml"))
    assert app.name == "qwen-vl" and app.config.engine.tensor_parallel_size == 4 and app.preprocess_cpus == 2
    assert app.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    env = batch.actor_runtime_env({"working_dir": ".", "py_modules": ["x"], "env_vars": {"A": "1"}, "pip": ["p"]})
    assert env == {"env_vars": {"A": "1"}, "pip": ["p"]}
    assert batch.default_max_in_flight(app.config, 2) == 2 * 256


def test_load_app_errors(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    raw["applications"].append(dict(raw["applications"][0], name="second", route_prefix="/2"))
    p = tmp_path / "two.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(batch.BatchError, match="pick one with --app"):
        batch.load_app(str(p))
    assert batch.load_app(str(p), "second").name == "second"
    raw["applications"][0]["args"]["engine"]["tensor_parallel_size"] = 0
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(batch.BatchError, match="tensor_parallel_size"):
        batch.load_app(str(p), "qwen-vl")
    with pytest.raises(batch.BatchError, match="No such file"):
        batch.load_app(str(tmp_path / "missing.yaml"))


def test_cli_refuses_duplicate_custom_ids(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join([line("a"), line("b"), line("a")]) + "\n")
    rc = batch.main(["--config", str(ROOT / "configs" / "local.yaml"), "--input", str(inp), "--output", str(out)])
    assert rc == 2 and not out.exists()
    assert "'a' on lines 1, 3" in capsys.readouterr().err


def test_cli_invalid_lines_only_needs_no_cluster_and_resumes(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("{oops\n" + json.dumps({"custom_id": "u", "url": "/v1/completions", "body": {}}) + "\n")
    args = ["--config", str(ROOT / "configs" / "local.yaml"), "--input", str(inp), "--output", str(out)]
    assert batch.main(args) == 0
    first = out.read_bytes()
    recs = [json.loads(x) for x in first.splitlines()]
    assert [(r["custom_id"], r["error"]["code"]) for r in recs] == [(None, "invalid_json"), ("u", "invalid_url")]
    assert batch.main(args) == 0  # a rerun: nothing left to do
    assert out.read_bytes() == first
    assert "to do now: 0" in capsys.readouterr().out
