"""OpenAI chat-completions wire format (pure pydantic models).

Requests are validated strictly: a field this server does not implement is refused with a 400 that
names it (``extra="forbid"``), never silently ignored. The same models generate the OpenAPI schema.
Content parts accept OpenAI's forms (``image_url``, ``video_url``) and the Qwen2.5-VL model card's
forms (``{"type": "image", "image": ...}``, ``{"type": "video", "video": ...}``), each with the
qwen-vl-utils per-item options.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # NaN and ±Infinity (accepted by pydantic's JSON parser) would pass one-sided bounds and reach vLLM.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# What vLLM's engine transport (MessagePack) carries: a seed outside int64 fails there, after the
# request was added to the engine (a 500 and a request left unfinished).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1024


# ---------------------------------------------------------------- content parts
class _ImageOptions(_Strict):
    min_pixels: int | None = Field(None, gt=0, description="qwen-vl-utils: lower bound on resized pixels")
    max_pixels: int | None = Field(None, gt=0, description="qwen-vl-utils: upper bound on resized pixels")
    resized_height: int | None = Field(None, gt=0, description="qwen-vl-utils: explicit height (rounded to 28)")
    resized_width: int | None = Field(None, gt=0, description="qwen-vl-utils: explicit width (rounded to 28)")

    def media_options(self) -> dict[str, Any]:
        skip = {"type", "image", "image_url", "video", "video_url"}
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in skip}


class _VideoOptions(_ImageOptions):
    fps: float | None = Field(None, gt=0, description="qwen-vl-utils: frames sampled per second")
    nframes: int | None = Field(None, gt=0, description="qwen-vl-utils: exact number of frames (rounded to even)")
    min_frames: int | None = Field(None, gt=0)
    max_frames: int | None = Field(None, gt=0)
    total_pixels: int | None = Field(None, gt=0, description="qwen-vl-utils: pixel budget over all frames")
    video_start: float | None = Field(None, ge=0, description="clip start, seconds")
    video_end: float | None = Field(None, gt=0, description="clip end, seconds")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="'low' / 'high': the server's pixel budgets media.image_detail_low_max_pixels / "
        "media.image_detail_high_max_pixels; 'auto': the default resolution. An explicit max_pixels or "
        "resized_height/resized_width on the part takes precedence."
    )


class ImageURLPart(_ImageOptions):
    type: Literal["image_url"]
    image_url: ImageURL


class ImagePart(_ImageOptions):
    type: Literal["image"]
    image: str = Field(description="http(s) URL, data URI, or a local path under an allowed root")


class VideoURL(_Strict):
    url: str


class VideoURLPart(_VideoOptions):
    type: Literal["video_url"]
    video_url: VideoURL


class VideoPart(_VideoOptions):
    type: Literal["video"]
    video: str | list[str] = Field(description="video URL/data URI/path, or a list of frame images")


ContentPart = Annotated[
    Union[TextPart, ImageURLPart, ImagePart, VideoURLPart, VideoPart], Field(discriminator="type")
]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _media_only_from_user(self) -> "ChatMessage":
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if isinstance(self.content, list) and self.role != "user":
            if any(not isinstance(p, TextPart) for p in self.content):
                raise ValueError(f"images and videos are accepted in user messages only, not {self.role}")
        return self


# ---------------------------------------------------------------- request
class StreamOptions(_Strict):
    include_usage: bool = False


class JSONSchemaFormat(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is 'json_schema'")
        return self


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated OpenAI name of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension; 0 or -1 disables")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM extension")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, description="vLLM extension")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS (benchmarks)")
    min_tokens: int | None = Field(None, ge=0, description="vLLM extension")
    user: str | None = Field(None, description="Recorded in the request log only")

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            if self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop accepts at most {MAX_STOP_SEQUENCES} sequences")
        if any(not s for s in stops):
            raise ValueError("stop cannot contain an empty string")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop sequence is at most {MAX_STOP_CHARS} characters")
        limit = self.output_token_limit
        if self.min_tokens is not None and limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be less than or equal to max_tokens ({limit})")
        if self.n > 1 and self.temperature is not None and self.temperature < 1e-5:
            raise ValueError(f"n must be 1 when using greedy sampling (temperature 0), got {self.n}")
        return self

    @property
    def output_token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---------------------------------------------------------------- responses (for the OpenAPI schema)
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None
    token_ids: list[int] | None = Field(None, description="Extension: generated token ids")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "serve_app"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail
