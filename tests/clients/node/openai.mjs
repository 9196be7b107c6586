// openai for Node against the gateway: `node openai.mjs CHECK`, prints one JSON line.
// Env: NOVAKIT_BASE_URL, NOVAKIT_API_KEY, NOVAKIT_MODEL, NOVAKIT_PROMPT.
import OpenAI from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import { z } from "zod";

const env = process.env;
const client = new OpenAI({ baseURL: env.NOVAKIT_BASE_URL, apiKey: env.NOVAKIT_API_KEY, maxRetries: 0 });
const model = env.NOVAKIT_MODEL;
const messages = [{ role: "user", content: env.NOVAKIT_PROMPT }];
const weatherTool = {
  type: "function",
  function: {
    name: "get_weather", description: "The weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false },
  },
};
const Weather = z.object({ city: z.string(), temperature_c: z.number() });

const checks = {
  async plain() {
    const completion = await client.chat.completions.create({ model, messages });
    return { content: completion.choices[0].message.content, usage: completion.usage };
  },
  async stream() {
    const stream = await client.chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
    const last = chunks[chunks.length - 1];
    return { content: text, last_choices: last.choices, usage: last.usage,
             usage_before_last: chunks.slice(0, -1).some((c) => c.usage) };
  },
  async tools() {
    const completion = await client.chat.completions.create({ model, messages, tools: [weatherTool] });
    const call = completion.choices[0].message.tool_calls[0];
    return { finish_reason: completion.choices[0].finish_reason, name: call.function.name,
             arguments: JSON.parse(call.function.arguments) };
  },
  async tools_stream() {
    const runner = client.chat.completions.stream({ model, messages, tools: [weatherTool], stream_options: { include_usage: true } });
    const completion = await runner.finalChatCompletion();
    const call = completion.choices[0].message.tool_calls[0];
    return { finish_reason: completion.choices[0].finish_reason, name: call.function.name,
             arguments: JSON.parse(call.function.arguments) };
  },
  async structured() {
    const completion = await client.chat.completions.parse({ model, messages, response_format: zodResponseFormat(Weather, "weather") });
    return { parsed: completion.choices[0].message.parsed };
  },
  async budget() {
    const completion = await client.chat.completions.create({ model, messages, max_completion_tokens: 5 });
    return { content: completion.choices[0].message.content };
  },
  async nulls() {
    const completion = await client.chat.completions.create({ model, messages, temperature: null, top_p: null, max_tokens: null, stop: null, n: null });
    return { content: completion.choices[0].message.content };
  },
};

try {
  console.log(JSON.stringify({ ok: true, ...(await checks[process.argv[2]]()) }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: {
    class: error.constructor.name, is_api_error: error instanceof OpenAI.APIError,
    is_authentication_error: error instanceof OpenAI.AuthenticationError,
    is_bad_request_error: error instanceof OpenAI.BadRequestError,
    status: error.status ?? null, code: error.code ?? null, param: error.param ?? null,
    type: error.type ?? null, message: error.message, body: error.error ?? null } }));
}
