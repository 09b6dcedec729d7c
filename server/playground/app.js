// SEED-X playground: a page of plain ES modules over the server's own OpenAI API.
// No build step, no dependencies. Every call goes through api() so errors show as the API
// returned them ({"error": {"message", "type", "param", "code"}}).

const $ = (selector) => document.querySelector(selector);
const state = { history: [], models: [], demo: false };

// ---- API plumbing -------------------------------------------------------------------------

function headers(json = true) {
  const h = {};
  const key = $("#api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(`${status} ${err.type || "error"}${err.param ? ` (param: ${err.param})` : ""}: ` +
      `${err.message || JSON.stringify(body)}`);
  }
}

async function api(path, init) {
  const response = await fetch(path, init);
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { body = { error: { message: response.statusText } }; }
    throw new ApiError(response.status, body);
  }
  return response;
}

// Server-sent events from a fetch body: yields each `data:` payload, parsed, until [DONE].
async function* sse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError("stream", event);
      yield event;
    }
  }
}

// Shows `error` (or hides the box when null) in `box`: a tab's own box, or the page's.
function showError(error, box = $("#error")) {
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

const fileToDataUrl = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

// ---- Per-tab busy state -------------------------------------------------------------------
// Each tab runs one request at a time, independently of the others: a chat answer streaming
// does not hold up a generation. While a tab's request runs, its buttons are disabled and its
// status line says what it waits for (with the seconds so far), so no click is silently lost.

const busyTabs = new Map();  // tab name -> { timer }

function tabParts(name) {
  const section = $(`#tab-${name}`);
  return {
    section,
    status: section.querySelector(".status"),
    error: section.querySelector(".error"),
    buttons: [...section.querySelectorAll("form button")],
    nav: $(`#tabs [data-tab="${name}"]`),
  };
}

function setBusy(name, label) {
  const parts = tabParts(name);
  const started = performance.now();
  const tick = () => {
    const seconds = Math.floor((performance.now() - started) / 1000);
    parts.status.textContent = `${label}… ${seconds} s`;
  };
  tick();
  parts.status.hidden = false;
  parts.buttons.forEach((b) => { b.disabled = true; });
  parts.nav.dataset.busy = "true";
  busyTabs.set(name, { timer: setInterval(tick, 1000) });
}

function setIdle(name) {
  const parts = tabParts(name);
  clearInterval(busyTabs.get(name)?.timer);
  busyTabs.delete(name);
  parts.status.hidden = true;
  parts.buttons.forEach((b) => { b.disabled = false; });
  delete parts.nav.dataset.busy;
}

// Runs `work` as tab `name`'s request; its error (the API's own message) shows in that tab.
async function inTab(name, label, work) {
  if (busyTabs.has(name)) return;  // its buttons are disabled; this guards other submit paths
  const { error } = tabParts(name);
  showError(null, error);
  setBusy(name, label);
  try { await work(); } catch (err) { showError(err, error); } finally { setIdle(name); }
}

// ---- Chat ---------------------------------------------------------------------------------

function figure(url, boxes = []) {
  const wrap = document.createElement("div");
  wrap.className = "figure";
  const img = new Image();
  img.src = url;
  img.alt = "image";
  wrap.append(img);
  img.addEventListener("load", () => drawBoxes(wrap, img, boxes));
  return wrap;
}

// Boxes come in pixels of the original image; scale them to the displayed size.
function drawBoxes(wrap, img, boxes) {
  wrap.querySelectorAll(".box").forEach((b) => b.remove());
  const sx = img.clientWidth / img.naturalWidth;
  const sy = img.clientHeight / img.naturalHeight;
  boxes.forEach((b, i) => {
    const el = document.createElement("div");
    el.className = "box";
    Object.assign(el.style, {
      left: `${b.x1 * sx}px`, top: `${b.y1 * sy}px`,
      width: `${(b.x2 - b.x1) * sx}px`, height: `${(b.y2 - b.y1) * sy}px`,
    });
    const label = document.createElement("span");
    label.textContent = b.label || `box ${i + 1}`;
    el.append(label);
    wrap.append(el);
  });
}

function addMessage(role) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  el.innerHTML = `<div class="role">${role}</div><div class="text"></div>`;
  $("#chat-log").append(el);
  return el;
}

// The request body of one chat turn: the whole conversation so far plus `turn`.
function chatBody(turn) {
  const body = {
    model: $("#chat-model").value || undefined,
    messages: [...state.history, turn],
    stream: true,
    stream_options: { include_usage: true },
  };
  const format = $("#chat-format").value;
  if (format !== "text") body.response_format = { type: format };
  const require = $("#chat-require-image").checked;
  // "allow" is a permission: dropped for a JSON answer, which cannot hold images. "require" is
  // a demand: sent as asked, so the server says what conflicts with it (a 400 naming the
  // parameter) rather than the page quietly answering without a picture.
  const images = require || ($("#chat-images-out").checked && format === "text");
  body.modalities = images ? ["text", "image"] : ["text"];
  if (images) {
    body.image_options = { size: $("#chat-image-size").value };
    const steps = $("#chat-image-steps").value;
    if (steps) body.image_options.steps = Number(steps);
    if (require) body.image_options.require = true;
  }
  if ($("#chat-logprobs").checked) Object.assign(body, { logprobs: true, top_logprobs: 3 });
  const maxTokens = $("#chat-max-tokens").value;
  if (maxTokens) body.max_tokens = Number(maxTokens);
  return body;
}

// The assistant turn as a non-streamed answer has it (server/chat/render.py): a string, or
// text and image_url parts once it drew. Sent back unchanged, the next turn sees the picture.
function assistantMessage(text, images) {
  if (!images.length) return { role: "assistant", content: text };
  const parts = text ? [{ type: "text", text }] : [];
  for (const url of images) parts.push({ type: "image_url", image_url: { url } });
  return { role: "assistant", content: parts };
}

// Renders a streamed answer into `answerEl` as it arrives, text and pictures in the order the
// model wrote them; returns what the conversation and the summary line need.
async function readAnswer(response, answerEl) {
  const out = { text: "", images: [], boxes: [], tokens: [], finish: null, usage: null };
  let textEl = answerEl.querySelector(".text");
  for await (const chunk of sse(response)) {
    if (chunk.usage) out.usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      if (choice.finish_reason) out.finish = choice.finish_reason;
      if (choice.logprobs && choice.logprobs.content) out.tokens.push(...choice.logprobs.content);
      const delta = choice.delta || {};
      if (delta.content) {
        if (!textEl) {
          textEl = document.createElement("div");
          textEl.className = "text";
          answerEl.append(textEl);
        }
        textEl.textContent += delta.content;
        out.text += delta.content;
      }
      for (const part of delta.images || []) {
        out.images.push(part.image_url.url);
        answerEl.append(figure(part.image_url.url));
        textEl = null;  // text after a picture goes below it
      }
      for (const a of delta.annotations || []) if (a.bounding_box) out.boxes.push(a.bounding_box);
    }
  }
  return out;
}

function answerSummary(answer) {
  const meta = document.createElement("div");
  meta.className = "meta";
  const { finish, usage, boxes, images } = answer;
  meta.textContent = [finish && `finish: ${finish}`,
    usage && `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`,
    boxes.length && `${boxes.length} box(es)`, images.length && `${images.length} image(s)`]
    .filter(Boolean).join(" · ");
  return meta;
}

async function sendChat(event) {
  event.preventDefault();
  const input = $("#chat-text");
  const text = input.value.trim();
  if (!text) return;
  const file = $("#chat-image").files[0];
  const label = $("#chat-require-image").checked ? "Waiting for the answer and its picture"
    : "Waiting for the answer";
  await inTab("chat", label, async () => {
    const userEl = addMessage("user");
    userEl.querySelector(".text").textContent = text;
    input.value = "";  // the text moved into the conversation; given back if the turn fails
    let answerEl = null;
    try {
      const content = [];
      let imageFigure = null;
      if (file) {  // image first, then the question: the order SEED-X-I was trained on
        const url = await fileToDataUrl(file);
        content.push({ type: "image_url", image_url: { url } });
        imageFigure = figure(url);
        userEl.append(imageFigure);
      }
      content.push({ type: "text", text });
      const turn = { role: "user", content };
      const response = await api("/v1/chat/completions",
        { method: "POST", headers: headers(), body: JSON.stringify(chatBody(turn)) });
      answerEl = addMessage("assistant");
      const answer = await readAnswer(response, answerEl);
      showAnswer(answerEl, answer, imageFigure);
      state.history.push(turn, assistantMessage(answer.text, answer.images));
      $("#chat-image").value = "";
    } catch (error) {
      // A turn that got no answer is not part of the conversation: take it (and any partial
      // answer) out of the log, and give the text back so it can be sent again.
      userEl.remove();
      answerEl?.remove();
      if (!input.value) input.value = text;
      throw error;
    }
  });
}

function showAnswer(answerEl, answer, imageFigure) {
  if (!answer.text && !answer.images.length) {  // e.g. only special tokens: say so
    const textEl = answerEl.querySelector(".text");
    textEl.textContent = "(no text)";
    textEl.classList.add("empty");
  }
  answerEl.append(answerSummary(answer));
  if (answer.tokens.length) answerEl.append(logprobTable(answer.tokens));
  if (imageFigure && answer.boxes.length) {
    const img = imageFigure.querySelector("img");
    drawBoxes(imageFigure, img, answer.boxes.filter((b) => (b.image_index || 0) === 0));
  }
}

// Each answer token with its probability and the likeliest alternatives (top_logprobs).
function logprobTable(tokens) {
  const details = document.createElement("details");
  details.className = "logprobs";
  const summary = document.createElement("summary");
  summary.textContent = `${tokens.length} token logprobs`;
  const table = document.createElement("table");
  const pct = (lp) => `${(100 * Math.exp(lp)).toFixed(1)}%`;
  for (const t of tokens) {
    const row = table.insertRow();
    row.insertCell().textContent = JSON.stringify(t.token);
    row.insertCell().textContent = pct(t.logprob);
    row.insertCell().textContent = (t.top_logprobs || [])
      .map((alt) => `${JSON.stringify(alt.token)} ${pct(alt.logprob)}`).join("  ");
  }
  details.append(summary, table);
  return details;
}

// ---- Images -------------------------------------------------------------------------------

function options(form) {
  const out = {};
  for (const el of form.querySelectorAll("fieldset.options [name]")) {
    if (el.value === "") continue;
    out[el.name] = el.type === "number" ? Number(el.value) : el.value;
  }
  return out;
}

function resultSlot(container, index) {
  let fig = container.querySelector(`[data-index="${index}"]`);
  if (!fig) {
    fig = document.createElement("figure");
    fig.dataset.index = index;
    fig.innerHTML = '<img alt=""><figcaption></figcaption><div class="previews"></div>';
    container.append(fig);
  }
  return fig;
}

// A preview is 1/8 of the output's side (32x32 for 256x256): shown at the final's display
// size with hard pixels while denoising goes on, and kept as a thumbnail under the result.
function showPreview(fig, url, number) {
  const img = fig.querySelector("img");
  img.src = url;
  img.classList.add("preview");
  fig.querySelector("figcaption").textContent = `preview ${number} (low resolution)`;
  const thumb = new Image();
  thumb.src = url;
  thumb.alt = thumb.title = `preview ${number}`;
  fig.querySelector(".previews").append(thumb);
  fig.dataset.final = "false";
}

function showFinal(fig, url) {
  const img = fig.querySelector("img");
  img.src = url;
  img.classList.remove("preview");
  fig.querySelector("figcaption").textContent = "final";
  fig.dataset.final = "true";
}

async function streamImages(response, container, format) {
  for await (const event of sse(response)) {
    const fig = resultSlot(container, event.image_index || 0);
    const url = `data:image/${event.output_format || format};base64,${event.b64_json}`;
    if (event.type.endsWith(".completed")) showFinal(fig, url);
    else showPreview(fig, url, (event.partial_image_index ?? 0) + 1);
  }
}

const PREVIEWS = 2;  // partial_images asked for on the streamed endpoints

async function generate(event) {
  event.preventDefault();
  const form = event.target;
  const container = $("#generate-results");
  await inTab("generate", "Generating", async () => {
    container.replaceChildren();
    const opts = options(form);
    const body = { prompt: $("#generate-prompt").value, stream: true, partial_images: PREVIEWS,
      ...opts };
    const response = await api("/v1/images/generations",
      { method: "POST", headers: headers(), body: JSON.stringify(body) });
    await streamImages(response, container, opts.output_format || "png");
  });
}

async function multipart(event, tab, path, fileInput, prompt) {
  event.preventDefault();
  const form = event.target;
  const container = form.parentElement.querySelector(".results");
  const label = tab === "edit" ? "Editing" : "Making variations";
  await inTab(tab, label, async () => {
    container.replaceChildren();
    const data = new FormData();
    data.append("image", fileInput.files[0]);
    if (prompt !== null) data.append("prompt", prompt);
    const opts = options(form);
    for (const [k, v] of Object.entries(opts)) data.append(k, String(v));
    const streams = path.endsWith("edits");
    if (streams) { data.append("stream", "true"); data.append("partial_images", String(PREVIEWS)); }
    const response = await api(path, { method: "POST", headers: headers(false), body: data });
    if (streams) return streamImages(response, container, opts.output_format || "png");
    const body = await response.json();
    body.data.forEach((item, i) => showFinal(resultSlot(container, i),
      item.url || `data:image/${body.output_format || "png"};base64,${item.b64_json}`));
  });
}

// ---- Models, demo and wiring --------------------------------------------------------------

let modelsAsked = 0;  // the newest /v1/models request: older answers (an older key) are dropped

async function loadModels() {
  const ticket = ++modelsAsked;
  let cards = [];
  let error = null;
  try {
    const response = await api("/v1/models", { headers: headers() });
    cards = (await response.json()).data;
  } catch (err) { error = err; }
  if (ticket !== modelsAsked) return;
  // Named, so it is not taken for the answer to whatever the user clicked last.
  showError(error && `Model list (GET /v1/models): ${error.message}`);
  state.models = cards.map((m) => m.id);
  const select = $("#chat-model");
  const chosen = select.value;
  select.replaceChildren(new Option("(default)", ""),
    ...state.models.filter((m) => m.startsWith("seed-x")).map((m) => new Option(m, m)));
  if (state.models.includes(chosen)) select.value = chosen;
  if (cards.some((m) => m.demo)) useDemo();
}

// The server is the tiny demo (random weights, CPU): say so, and start from the small values
// in each field's data-demo, so a first answer takes seconds rather than half a minute. A field
// the user already changed keeps the user's value.
function useDemo() {
  if (state.demo) return;
  state.demo = true;
  $("#demo-banner").hidden = false;
  document.querySelectorAll("[data-demo]").forEach((el) => {
    if (!el.dataset.edited) el.value = el.dataset.demo;
  });
}

// The model list depends on the key: reload it as the key is typed (after a short pause, not
// on each keystroke) and at once when the field is left.
function watchApiKey() {
  const input = $("#api-key");
  input.value = localStorage.getItem("seedx-api-key") || "";
  let pause = null;
  const keyChanged = () => {
    clearTimeout(pause);
    localStorage.setItem("seedx-api-key", input.value);
    loadModels();
  };
  input.addEventListener("input", () => {
    clearTimeout(pause);
    pause = setTimeout(keyChanged, 300);
  });
  input.addEventListener("change", keyChanged);
}

function selectTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => {
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
  });
  document.querySelectorAll(".tab").forEach((t) => { t.dataset.active = String(t.id === `tab-${name}`); });
}

// Keeps "require an image" and "allow image answers" consistent: requiring implies allowing.
function linkImageChoices() {
  const allow = $("#chat-images-out");
  const require = $("#chat-require-image");
  require.addEventListener("change", () => { if (require.checked) allow.checked = true; });
  allow.addEventListener("change", () => { if (!allow.checked) require.checked = false; });
}

function init() {
  const template = $("#image-options");
  document.querySelectorAll("fieldset.options").forEach((f) => f.append(template.content.cloneNode(true)));
  document.querySelectorAll("[data-demo]").forEach((el) => {
    el.addEventListener("input", () => { el.dataset.edited = "true"; });
  });
  $("#tabs").addEventListener("click", (e) => { if (e.target.dataset.tab) selectTab(e.target.dataset.tab); });
  watchApiKey();
  linkImageChoices();
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-reset").addEventListener("click", () => { state.history = []; $("#chat-log").replaceChildren(); });
  $("#generate-form").addEventListener("submit", generate);
  $("#edit-form").addEventListener("submit",
    (e) => multipart(e, "edit", "/v1/images/edits", $("#edit-image"), $("#edit-prompt").value));
  $("#variation-form").addEventListener("submit",
    (e) => multipart(e, "variation", "/v1/images/variations", $("#variation-image"), null));
  loadModels();
}

init();
