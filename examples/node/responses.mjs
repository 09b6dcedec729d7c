// The official `openai` npm client's Responses API against the SEED-X gateway: a plain answer,
// a streamed one, a drawn image (image_generation tool) and a follow-up by previous_response_id.
//
//   npm install
//   OPENAI_BASE_URL=http://localhost:8000/v1 node responses.mjs
//
// OPENAI_API_KEY is sent as the Bearer key (any value when the server needs none).
import { writeFileSync } from "node:fs";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL ?? "http://localhost:8000/v1",
  apiKey: process.env.OPENAI_API_KEY ?? "demo",
});
const size = process.env.SEEDX_IMAGE_SIZE ?? "256x256";

const plain = await client.responses.create({
  model: "seed-x-i",
  input: "Say hello.",
  max_output_tokens: 16,
});
console.log(`plain: ${plain.status} ${JSON.stringify(plain.output_text)}`);

const stream = client.responses.stream({
  model: "seed-x-i",
  input: "Tell me a story.",
  max_output_tokens: 16,
});
let deltas = 0;
for await (const event of stream) {
  if (event.type === "response.output_text.delta") deltas += 1;
}
const streamed = await stream.finalResponse();
console.log(`streamed: ${deltas} deltas, ${streamed.usage.output_tokens} output tokens`);

const drawn = await client.responses.create({
  model: "seed-x-i",
  input: "Draw a cat.",
  tools: [{ type: "image_generation", size, quality: "low" }],
  tool_choice: "required",
  max_output_tokens: 80,
});
const image = drawn.output.find((item) => item.type === "image_generation_call");
writeFileSync("responses-cat.png", Buffer.from(image.result, "base64"));
console.log(`image: ${image.size} ${image.output_format}`);

const followUp = await client.responses.create({
  model: "seed-x-i",
  input: "What colour is it?",
  previous_response_id: drawn.id,
  max_output_tokens: 8,
});
console.log(`follow-up: ${followUp.previous_response_id === drawn.id} ${followUp.usage.input_tokens} input tokens`);
