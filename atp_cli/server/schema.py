"""The OpenAI chat-completions request and response, as pydantic models (what `atp serve` accepts and sends).

Fields clients send that atp has no use for (presence_penalty, logit_bias, user, ...) are accepted and ignored, as
llama.cpp's server does; fields whose values would change the answer in a way atp cannot honour (n > 1, tools) are
refused. The `atp` object is atp's extension: the pruning of this request, and what it did.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageUrl(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class AtpOptions(BaseModel):
    """Pruning for this request: a strategy (atp, fastv, ...; default the server's) and an average visual-token
    budget over the decoder layers (atp: one of the model's operating points; fixed rules: met by construction)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str | None = None
    budget: float | None = Field(None, gt=0)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)  # None: the server's (greedy unless set at start)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    tools: list | None = Field(None, max_length=0)
    atp: AtpOptions | None = None

    def stops(self) -> list[str]:
        """The stop sequences (at most 4, none empty: OpenAI's rule)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty sequences")
        return stops


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AtpReport(BaseModel):
    """What atp did for this answer."""

    strategy: str
    budget: float | None
    visual_tokens_in: int  # entering the language model
    visual_tokens_avg: float  # averaged over all decoder layers
    encode_seconds: float  # the vision encoder (0 when the image came from the embedding cache)
    prefill_seconds: float
    first_token_seconds: float
    kv_bytes: int
    prefill_reused: bool  # the conversation continued from the caches, without prefilling its history again


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    atp: AtpReport


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    atp: AtpReport | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "atp"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
