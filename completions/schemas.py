"""The chat completions request, as the public contract documents it.

Parameters the contract lists are validated here with its ranges. A
parameter the client did not send (or sent as `null`, which OpenAI's spec
allows for the nullable ones) stays unset: the gateway forwards what the
client sent, and adds only what it must (README "Compatibility"). Anything
else OpenAI defines (tools, response_format, seed, logprobs, functions ...)
is kept as an extra field and passed to the upstream untouched.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = "openai/gpt-4o-mini"
# The completion budget of a request that names none (the contract's max_tokens default).
DEFAULT_COMPLETION_BUDGET = 2048
# The contract's sampling temperature, sent only to models that take one.
DEFAULT_TEMPERATURE = 0.7
# What applies to a parameter the client leaves out (the contract's table): the
# first two NovaKit sends, the others are the providers' own defaults.
EFFECTIVE_DEFAULTS = {
    "temperature": DEFAULT_TEMPERATURE, "max_tokens": DEFAULT_COMPLETION_BUDGET,
    "top_p": 1, "frequency_penalty": 0, "presence_penalty": 0,
}
MAX_IMAGES_PER_MESSAGE = 4
# The most choices (`n`) one request may ask for. Each is priced and reserved
# (README "Credits"); OpenAI's own bound is 128, ours is lower so one request's
# worst case stays something a balance and a rate limit can sensibly hold.
MAX_CHOICES = 16


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    # "function": the legacy function-calling result message, still accepted by OpenAI.
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None
    images: list[str] | None = Field(default=None, max_length=MAX_IMAGES_PER_MESSAGE)
    name: str | None = Field(default=None, max_length=256)

    @field_validator("images")
    @classmethod
    def _image_urls(cls, images: list[str] | None) -> list[str] | None:
        for url in images or ():
            if not (url.startswith(("https://", "http://", "data:image/"))):
                raise ValueError("each image must be an http(s) URL or a data:image/ URL")
        return images

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        # Only an assistant turn that calls tools may leave out its content.
        if self.content is None and not (self.role == "assistant" and self.model_extra):
            raise ValueError("content is required")
        if isinstance(self.content, list):
            for part in self.content:
                if not isinstance(part.get("type"), str):
                    raise ValueError("each content part needs a 'type'")
        return self


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {
        "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hello!"}],
    }})

    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    model: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=200)
    # Numbers and switches are strict, as OpenAI's are: pydantic would otherwise take
    # "0.5", true, "on" or "100" and pass a request that is not what the client meant.
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    stream: bool | None = Field(default=False, strict=True)
    web_search: bool = Field(default=False, strict=True)
    top_p: float | None = Field(default=None, ge=0, le=1, strict=True)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, strict=True)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, strict=True)
    # How many completions to generate: each one is reserved for and charged.
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES, strict=True)
    stop: str | list[str] | None = None
    user: str | None = Field(default=None, max_length=256)
    # Passed through, but typed: the gateway adds to them (usage for streams, the web plugin).
    stream_options: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    @field_validator("user")
    @classmethod
    def _user(cls, user: str | None) -> str | None:
        # Kept with the usage record, and PostgreSQL's text cannot hold a NUL.
        if user is not None and "\x00" in user:
            raise ValueError("must not contain NUL characters")
        return user

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _max_tokens_whole(cls, value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("stream", mode="after")
    @classmethod
    def _stream_null(cls, stream: bool | None) -> bool:
        return bool(stream)

    def completion_budget(self) -> int:
        """The most tokens the answer may have: OpenAI's newer `max_completion_tokens` wins."""
        newer = (self.model_extra or {}).get("max_completion_tokens")
        if isinstance(newer, int) and not isinstance(newer, bool) and newer > 0:
            return newer
        return self.max_tokens or DEFAULT_COMPLETION_BUDGET

    def choices(self) -> int:
        return self.n or 1

    def image_count(self) -> int:
        count = 0
        for message in self.messages:
            count += len(message.images or ())
            if isinstance(message.content, list):
                count += sum(1 for part in message.content if part.get("type") == "image_url")
        return count
