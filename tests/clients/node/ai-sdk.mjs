// The Vercel AI SDK (ai + @ai-sdk/openai, chat-completions mode) against the gateway:
// `node ai-sdk.mjs CHECK`, prints one JSON line.
// Env: NOVAKIT_BASE_URL, NOVAKIT_API_KEY, NOVAKIT_MODEL, NOVAKIT_PROMPT.
import { createOpenAI } from "@ai-sdk/openai";
import { APICallError, generateText, Output, streamText, tool } from "ai";
import { z } from "zod";

const env = process.env;
const provider = createOpenAI({ baseURL: env.NOVAKIT_BASE_URL, apiKey: env.NOVAKIT_API_KEY });
const model = provider.chat(env.NOVAKIT_MODEL);
const prompt = env.NOVAKIT_PROMPT;
const tools = {
  get_weather: tool({
    description: "The weather in a city",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => ({ city, temperature_c: 21.5 }),
  }),
};
const Weather = z.object({ city: z.string(), temperature_c: z.number() });
const call = (calls) => ({ name: calls[0].toolName, arguments: calls[0].input });

const checks = {
  async plain() {
    const result = await generateText({ model, prompt });
    return { content: result.text, finish_reason: result.finishReason, usage: result.usage,
             credits_used: result.response.body?.usage?.credits_used ?? null };
  },
  async stream() {
    const result = streamText({ model, prompt, onError: () => {} });
    let text = "";
    for await (const piece of result.textStream) text += piece;
    return { content: text, finish_reason: await result.finishReason, usage: await result.usage };
  },
  async tools() {
    const result = await generateText({ model, prompt, tools });
    return { finish_reason: result.finishReason, ...call(result.toolCalls),
             tool_results: result.toolResults.map((r) => r.output) };
  },
  async tools_stream() {
    const result = streamText({ model, prompt, tools, onError: () => {} });
    await result.consumeStream();
    return { finish_reason: await result.finishReason, ...call(await result.toolCalls),
             usage: await result.usage };
  },
  async structured() {
    const result = await generateText({ model, prompt, output: Output.object({ schema: Weather }) });
    return { parsed: result.output };
  },
  async budget() {
    const result = await generateText({ model, prompt, maxOutputTokens: 5 });
    return { content: result.text };
  },
};

try {
  console.log(JSON.stringify({ ok: true, ...(await checks[process.argv[2]]()) }));
} catch (error) {
  // A refusal that was retried arrives wrapped in a RetryError: report the last attempt's.
  const cause = APICallError.isInstance(error) ? error : (error.lastError ?? error);
  console.log(JSON.stringify({ ok: false, error: {
    class: error.constructor.name, name: cause.name,
    is_api_call_error: APICallError.isInstance(cause), status: cause.statusCode ?? null,
    retryable: cause.isRetryable ?? null, data: cause.data ?? null,
    body: cause.responseBody ?? null, message: cause.message } }));
}
