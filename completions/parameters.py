"""What a chat completion forwards to its provider: what the client sent, and little else.

The rules (README "Compatibility"):
- Every parameter the client sent is forwarded as sent; one sent as `null` is
  left out (the provider's default, which is what `null` means).
- NovaKit adds the completion budget it reserved for, as the one parameter the
  model takes: `max_completion_tokens` for reasoning models, for models that
  do not take `max_tokens`, and when the client itself sent it; otherwise
  `max_tokens`. Never both.
- The contract's default temperature (0.7) is added when the client sent none
  and the model takes one. The contract's other defaults (top_p 1, penalties
  0) are the providers' own, so nothing is added for them.
- Where the catalog knows what a model accepts: a tuning parameter it does not
  accept (temperature, top_p, penalties, seed, stop ...) is dropped, since the
  answer is still an answer without it; a feature it does not accept (tools,
  structured output, legacy functions) is refused with a 400 naming it, since
  an answer without it is not what the client asked for.
"""

from __future__ import annotations

from typing import Any

from completions.catalog import ModelInfo
from completions.schemas import DEFAULT_TEMPERATURE, ChatCompletionRequest
from novakit.errors import invalid_request

# Set by the gateway itself: the model's upstream name, streaming, web search.
_DECIDED_HERE = {"messages", "model", "stream", "web_search"}
_BUDGETS = ("max_tokens", "max_completion_tokens")
TUNING = frozenset({
    "temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "stop",
    "logit_bias", "logprobs", "top_logprobs", "top_k", "min_p", "repetition_penalty",
})
# A feature, and the catalog parameter that says the model has it.
FEATURES = {
    "tools": "tools", "tool_choice": "tools", "parallel_tool_calls": "tools",
    "functions": "tools", "function_call": "tools", "response_format": "response_format",
}


def parameters_check(body: ChatCompletionRequest, model: ModelInfo) -> None:
    """Refuse a feature the model is known not to accept (400, naming it)."""
    if not model.supported_parameters:
        return
    # Names only: the body is dumped once per request, by `forwarded_parameters`.
    extra = body.model_extra or {}
    sent = {name for name in body.model_fields_set if getattr(body, name) is not None}
    sent |= {name for name, value in extra.items() if value is not None}
    for name, needs in FEATURES.items():
        if name in sent and not model.accepts(needs):
            raise invalid_request(f"The model '{model.model_id}' does not support '{name}'",
                                  param=name)


def forwarded_parameters(body: ChatCompletionRequest, model: ModelInfo, *,
                         budget: int) -> dict[str, Any]:
    """The request body's parameters as the provider gets them, messages and model aside."""
    sent = _sent(body)
    payload = {name: value for name, value in sent.items()
               if name not in _BUDGETS and not (name in TUNING and not model.accepts(name))}
    payload[_budget_name(model, sent)] = budget
    # Sent as null, it means the provider's default: left alone too.
    chosen = "temperature" in body.model_fields_set
    if not chosen and model.accepts("temperature") and not model.reasoning:
        payload["temperature"] = DEFAULT_TEMPERATURE
    return payload


def _sent(body: ChatCompletionRequest) -> dict[str, Any]:
    """What the client sent, explicit nulls left out."""
    sent = body.model_dump(exclude_unset=True, exclude=_DECIDED_HERE)
    return {name: value for name, value in sent.items() if value is not None}


def _budget_name(model: ModelInfo, sent: dict[str, Any]) -> str:
    if model.reasoning or not model.accepts("max_tokens") or "max_completion_tokens" in sent:
        return "max_completion_tokens"
    return "max_tokens"
