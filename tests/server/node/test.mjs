// Drives miniagent's OpenAI-compatible API with the official `openai` npm package.
// Usage: node test.mjs <base_url> <api_key>
// Prints one JSON object (what the Python test `test_openai_node.py` asserts); exits non-zero on any error.
import OpenAI from "openai";

const [baseUrl, apiKey] = process.argv.slice(2);
if (!baseUrl || !apiKey) {
  console.error("usage: node test.mjs <base_url> <api_key>");
  process.exit(2);
}

const client = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey, maxRetries: 0 });

const models = await client.models.list();

const whole = await client.chat.completions.create({
  model: "assistant",
  messages: [
    { role: "system", content: "Be brief." },
    { role: "user", content: "hello from node" },
  ],
});

const stream = await client.chat.completions.create({
  model: "assistant",
  messages: [{ role: "user", content: "stream from node" }],
  stream: true,
  stream_options: { include_usage: true },
});
const chunks = [];
for await (const chunk of stream) {
  chunks.push(chunk);
}

let notFound = null;
try {
  await client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] });
} catch (error) {
  if (!(error instanceof OpenAI.NotFoundError)) throw error;
  notFound = { status: error.status, code: error.code, param: error.param, type: error.type };
}

console.log(
  JSON.stringify({
    models: models.data.map((m) => m.id),
    whole: {
      id: whole.id,
      object: whole.object,
      content: whole.choices[0].message.content,
      finish_reason: whole.choices[0].finish_reason,
      usage: whole.usage,
    },
    stream: {
      ids: [...new Set(chunks.map((c) => c.id))],
      role: chunks[0].choices[0]?.delta?.role ?? null,
      text: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
      finish_reasons: chunks.map((c) => c.choices[0]?.finish_reason).filter((r) => r),
      usage: chunks[chunks.length - 1].usage ?? null,
      usage_chunk_choices: chunks[chunks.length - 1].choices.length,
    },
    not_found: notFound,
  }),
);
