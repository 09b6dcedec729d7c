// SEED-X playground: a page of plain ES modules over the server's own OpenAI API.
// No build step, no dependencies. Every call goes through api() so errors show as the API
// returned them ({"error": {"message", "type", "param", "code"}}).

const $ = (selector) => document.querySelector(selector);
const state = { history: [], models: [], busy: false };

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

function showError(error) {
  const box = $("#error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

async function busy(button, work) {
  if (state.busy) return;
  state.busy = true;
  button.disabled = true;
  showError(null);
  try { await work(); } catch (error) { showError(error); } finally {
    state.busy = false;
    button.disabled = false;
  }
}

const fileToDataUrl = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

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

async function sendChat(event) {
  event.preventDefault();
  const text = $("#chat-text").value.trim();
  if (!text) return;
  const file = $("#chat-image").files[0];
  await busy($("#chat-send"), async () => {
    const content = [];
    const userEl = addMessage("user");
    userEl.querySelector(".text").textContent = text;
    let imageFigure = null;
    if (file) {  // image first, then the question: the order SEED-X-I was trained on
      const url = await fileToDataUrl(file);
      content.push({ type: "image_url", image_url: { url } });
      imageFigure = figure(url);
      userEl.append(imageFigure);
    }
    content.push({ type: "text", text });
    const turn = { role: "user", content };
    const body = {
      model: $("#chat-model").value || undefined,
      messages: [...state.history, turn],
      stream: true,
      stream_options: { include_usage: true },
    };
    const format = $("#chat-format").value;
    if (format !== "text") body.response_format = { type: format };
    // A JSON answer cannot hold images (the server says so with a 400): text only then.
    if (!$("#chat-images-out").checked || format !== "text") body.modalities = ["text"];
    if ($("#chat-logprobs").checked) Object.assign(body, { logprobs: true, top_logprobs: 3 });
    const maxTokens = $("#chat-max-tokens").value;
    if (maxTokens) body.max_tokens = Number(maxTokens);
    const response = await api("/v1/chat/completions",
      { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const answerEl = addMessage("assistant");
    const textEl = answerEl.querySelector(".text");
    let answer = "";
    let finish = null;
    let usage = null;
    const images = [];
    const boxes = [];
    const tokens = [];
    for await (const chunk of sse(response)) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.finish_reason) finish = choice.finish_reason;
        if (choice.logprobs && choice.logprobs.content) tokens.push(...choice.logprobs.content);
        const delta = choice.delta || {};
        if (delta.content) { answer += delta.content; textEl.textContent = answer; }
        for (const part of delta.images || []) {
          images.push(part.image_url.url);
          answerEl.append(figure(part.image_url.url));
        }
        for (const a of delta.annotations || []) if (a.bounding_box) boxes.push(a.bounding_box);
      }
    }
    if (!answer && !images.length) {  // e.g. only special tokens: say so rather than show nothing
      textEl.textContent = "(no text)";
      textEl.classList.add("empty");
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = [finish && `finish: ${finish}`,
      usage && `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`,
      boxes.length && `${boxes.length} box(es)`, images.length && `${images.length} image(s)`]
      .filter(Boolean).join(" · ");
    answerEl.append(meta);
    if (tokens.length) answerEl.append(logprobTable(tokens));
    if (imageFigure && boxes.length) {
      const img = imageFigure.querySelector("img");
      drawBoxes(imageFigure, img, boxes.filter((b) => (b.image_index || 0) === 0));
    }
    // Keep the turn in OpenAI's shape so the next request carries the whole conversation.
    const assistantContent = [{ type: "text", text: answer },
      ...images.map((url) => ({ type: "image_url", image_url: { url } }))];
    state.history.push(turn, { role: "assistant", content: assistantContent });
    $("#chat-text").value = "";
    $("#chat-image").value = "";
  });
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
    fig.innerHTML = '<img alt=""><figcaption></figcaption>';
    container.append(fig);
  }
  return fig;
}

async function streamImages(response, container, format) {
  for await (const event of sse(response)) {
    const fig = resultSlot(container, event.image_index || 0);
    fig.querySelector("img").src = `data:image/${event.output_format || format};base64,${event.b64_json}`;
    const final = event.type.endsWith(".completed");
    fig.querySelector("figcaption").textContent = final ? "final"
      : `preview ${(event.partial_image_index ?? 0) + 1}`;
    fig.dataset.final = String(final);
  }
}

async function generate(event) {
  event.preventDefault();
  const form = event.target;
  const container = $("#generate-results");
  await busy(form.querySelector("button"), async () => {
    container.replaceChildren();
    const opts = options(form);
    const body = { prompt: $("#generate-prompt").value, stream: true, partial_images: 2, ...opts };
    const response = await api("/v1/images/generations",
      { method: "POST", headers: headers(), body: JSON.stringify(body) });
    await streamImages(response, container, opts.output_format || "png");
  });
}

async function multipart(event, path, fileInput, prompt) {
  event.preventDefault();
  const form = event.target;
  const container = form.parentElement.querySelector(".results");
  await busy(form.querySelector("button"), async () => {
    container.replaceChildren();
    const data = new FormData();
    data.append("image", fileInput.files[0]);
    if (prompt !== null) data.append("prompt", prompt);
    const opts = options(form);
    for (const [k, v] of Object.entries(opts)) data.append(k, String(v));
    const streams = path.endsWith("edits");
    if (streams) { data.append("stream", "true"); data.append("partial_images", "2"); }
    const response = await api(path, { method: "POST", headers: headers(false), body: data });
    if (streams) return streamImages(response, container, opts.output_format || "png");
    const body = await response.json();
    body.data.forEach((item, i) => {
      const fig = resultSlot(container, i);
      fig.querySelector("img").src = item.url ||
        `data:image/${body.output_format || "png"};base64,${item.b64_json}`;
      fig.querySelector("figcaption").textContent = "final";
      fig.dataset.final = "true";
    });
  });
}

// ---- Wiring -------------------------------------------------------------------------------

async function loadModels() {
  try {
    const response = await api("/v1/models", { headers: headers() });
    state.models = (await response.json()).data.map((m) => m.id);
    showError(null);
  } catch (error) { state.models = []; showError(error); }
  const select = $("#chat-model");
  select.replaceChildren(new Option("(default)", ""),
    ...state.models.filter((m) => m.startsWith("seed-x")).map((m) => new Option(m, m)));
}

function selectTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => {
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
  });
  document.querySelectorAll(".tab").forEach((t) => { t.dataset.active = String(t.id === `tab-${name}`); });
}

function init() {
  const template = $("#image-options");
  document.querySelectorAll("fieldset.options").forEach((f) => f.append(template.content.cloneNode(true)));
  $("#tabs").addEventListener("click", (e) => { if (e.target.dataset.tab) selectTab(e.target.dataset.tab); });
  $("#api-key").value = localStorage.getItem("seedx-api-key") || "";
  $("#api-key").addEventListener("change", () => {
    localStorage.setItem("seedx-api-key", $("#api-key").value);
    loadModels();
  });
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-reset").addEventListener("click", () => { state.history = []; $("#chat-log").replaceChildren(); });
  $("#generate-form").addEventListener("submit", generate);
  $("#edit-form").addEventListener("submit",
    (e) => multipart(e, "/v1/images/edits", $("#edit-image"), $("#edit-prompt").value));
  $("#variation-form").addEventListener("submit",
    (e) => multipart(e, "/v1/images/variations", $("#variation-image"), null));
  loadModels();
}

init();
