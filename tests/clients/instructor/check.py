"""instructor against the gateway, in its own venv (requirements.txt beside this file):
`python check.py CHECK` prints one JSON line. Env: NOVAKIT_BASE_URL, NOVAKIT_API_KEY,
NOVAKIT_MODEL, NOVAKIT_PROMPT."""

from __future__ import annotations

import json
import os
import sys

import instructor
import openai
from pydantic import BaseModel


class Weather(BaseModel):
    city: str
    temperature_c: float


def client(mode: instructor.Mode = instructor.Mode.TOOLS) -> instructor.Instructor:
    raw = openai.OpenAI(base_url=os.environ["NOVAKIT_BASE_URL"],
                        api_key=os.environ["NOVAKIT_API_KEY"], max_retries=0)
    return instructor.from_openai(raw, mode=mode)


def request(**options: object) -> dict[str, object]:
    return {"model": os.environ["NOVAKIT_MODEL"],
            "messages": [{"role": "user", "content": os.environ["NOVAKIT_PROMPT"]}],
            "max_retries": 0, **options}


def plain() -> dict[str, object]:
    completion = client().chat.completions.create(**request(response_model=None))
    return {"content": completion.choices[0].message.content}


def budget() -> dict[str, object]:
    completion = client().chat.completions.create(**request(response_model=None,
                                                            max_tokens=5))
    return {"content": completion.choices[0].message.content}


def tools() -> dict[str, object]:
    weather = client(instructor.Mode.TOOLS).chat.completions.create(
        **request(response_model=Weather))
    return {"parsed": weather.model_dump()}


def tools_stream() -> dict[str, object]:
    partials = list(client(instructor.Mode.TOOLS).chat.completions.create_partial(
        **request(response_model=Weather)))
    return {"parsed": partials[-1].model_dump(), "partials": len(partials)}


def structured() -> dict[str, object]:
    weather = client(instructor.Mode.JSON_SCHEMA).chat.completions.create(
        **request(response_model=Weather))
    return {"parsed": weather.model_dump()}


def stream() -> dict[str, object]:
    partials = list(client(instructor.Mode.JSON_SCHEMA).chat.completions.create_partial(
        **request(response_model=Weather)))
    return {"parsed": partials[-1].model_dump(), "partials": len(partials)}


def error_of(error: BaseException) -> dict[str, object]:
    # instructor may wrap the SDK's error in its own; report both.
    cause = error
    while not isinstance(cause, openai.APIStatusError) and cause.__cause__ is not None:
        cause = cause.__cause__
    found: dict[str, object] = {"class": type(error).__name__,
                                "module": type(error).__module__,
                                "cause_class": type(cause).__name__}
    if isinstance(cause, openai.APIStatusError):
        found.update(status=cause.status_code, code=cause.code, param=cause.param,
                     type=cause.type, body=cause.body,
                     is_authentication_error=isinstance(cause, openai.AuthenticationError),
                     is_bad_request_error=isinstance(cause, openai.BadRequestError))
    return found


if __name__ == "__main__":
    try:
        result: dict[str, object] = {"ok": True, **globals()[sys.argv[1]]()}
    except Exception as error:  # any failure: the test asserts on what it was
        result = {"ok": False, "error": error_of(error)}
    print(json.dumps(result, default=str))
