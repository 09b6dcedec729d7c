// The official `openai` npm client against seedx serve: a chat about an image, then a picture.
//
//   npm install
//   OPENAI_BASE_URL=http://localhost:8000/v1 node quickstart.mjs [photo.png]
//
// OPENAI_API_KEY is sent as the Bearer key (any value when the server needs none).
import { readFileSync, writeFileSync } from "node:fs";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL ?? "http://localhost:8000/v1",
  apiKey: process.env.OPENAI_API_KEY ?? "demo",
});

// A picture to ask about: the file given on the command line, else a 1x1 orange PNG.
const ORANGE =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4/58BAAT/Af9jgNErAAAAAElFTkSuQmCC";
const photo = process.argv[2] ? readFileSync(process.argv[2]).toString("base64") : ORANGE;

const models = await client.models.list();
console.log("models:", models.data.map((m) => m.id).join(", "));

const answer = await client.chat.completions.create({
  model: "seed-x-i",
  max_tokens: 32,
  messages: [{
    role: "user",
    content: [
      { type: "image_url", image_url: { url: `data:image/png;base64,${photo}` } },
      { type: "text", text: "What is in this picture?" },
    ],
  }],
});
console.log("chat:", JSON.stringify(answer.choices[0].message.content),
  `(${answer.usage.prompt_tokens} prompt tokens)`);

const image = await client.images.generate({
  model: "seed-x-i",
  prompt: "a red cube on a wooden table",
  size: "256x256",
  steps: 20, // a SEED-X extra field, passed through as is
});
writeFileSync("cube.png", Buffer.from(image.data[0].b64_json, "base64"));
console.log("image: wrote cube.png");
