// The concept studio: generate, read each token's concepts, steer them, compare.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { info: null, steering: new Map(), pinned: null, busy: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

// Server-sent events of a streaming completion, parsed.
async function* events(body) {
  const response = await fetch("/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) {
    const data = await response.json();
    throw new Error(data.error ? data.error.message : response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (line === "[DONE]") return;
      const event = JSON.parse(line);
      if (event.error) throw new Error(event.error.message);
      yield event;
    }
  }
}

function settings() {
  const number = (id, fallback) => {
    const value = parseFloat($(id).value);
    return Number.isFinite(value) ? value : fallback;
  };
  return { prompt: $("#prompt").value, max_tokens: Math.max(1, Math.round(number("#max-tokens", 40))),
           temperature: number("#temperature", 0), seed: Math.round(number("#seed", 0)) };
}

// Stream one completion into `target`, the prompt in bold before it; returns text and usage.
async function streamInto(target, body) {
  target.replaceChildren(el("b", {}, body.prompt));
  const out = document.createTextNode("");
  target.append(out);
  let text = "", usage = null;
  const started = performance.now();
  for await (const event of events(body)) {
    if (event.usage) usage = event.usage;
    for (const choice of event.choices) { text += choice.text; out.data = text; }
  }
  const seconds = (performance.now() - started) / 1000;
  if (usage) $("#speed").textContent = `${usage.completion_tokens} tokens in ${seconds.toFixed(2)} s`;
  return { text, usage };
}

function visible(token) {
  const shown = token.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  return shown.trim() ? shown : shown.replace(/\s/g, "␣") || "∅";
}

function conceptName(index, label) {
  return label || (state.info.kind === "sae" ? "latent" : "concept");
}

function renderTokens(rows, promptTokens) {
  const strip = $("#tokens");
  strip.replaceChildren();
  state.pinned = null;
  rows.forEach((row, i) => {
    const chip = el("button", {
      class: "chip" + (i < promptTokens ? " prompt" : ""), role: "listitem",
      "data-position": String(row.position), title: `token ${row.position}`,
      onmouseenter: () => show(row, chip), onfocus: () => show(row, chip),
      onclick: () => pin(row, chip),
    }, visible(row.token));
    strip.append(chip);
  });
  $("#live").hidden = rows.length > 0;
}

function pin(row, chip) {
  document.querySelectorAll(".chip.pinned").forEach((c) => c.classList.remove("pinned"));
  state.pinned = state.pinned === chip ? null : chip;
  if (state.pinned) chip.classList.add("pinned");
  show(row, chip, true);
}

function show(row, chip, force = false) {
  if (state.pinned && state.pinned !== chip && !force) return;
  document.querySelectorAll(".chip.shown").forEach((c) => c.classList.remove("shown"));
  chip.classList.add("shown");
  $("#concept-token").textContent = visible(row.token);
  const list = $("#concepts");
  list.replaceChildren();
  const key = state.info.kind === "sae" ? "activation" : "logit";
  if (!row.concepts.length) { list.append(el("p", { class: "muted" }, "no active concepts")); return; }
  const scale = Math.max(...row.concepts.map((c) => Math.abs(c[key])), 1e-6);
  for (const c of row.concepts) {
    const width = `${(100 * Math.abs(c[key])) / scale}%`;
    const bar = el("span", { class: c[key] < 0 ? "neg" : "", style: `width:${width}` });
    list.append(el("div", { class: "concept" },
      el("span", { class: "name", title: c.label || `concept ${c.index}` },
        conceptName(c.index, c.label), " ", el("small", {}, `#${c.index}`)),
      el("div", { class: "bar", "aria-hidden": "true" }, bar),
      el("span", { class: "value" }, c[key].toFixed(2)),
      el("button", { class: "steer", "aria-label": `steer ${c.label || c.index}`,
                     onclick: () => addSteer(c.index, c.label) }, "steer")));
  }
}

function addSteer(index, label, alpha = 5) {
  if (!state.info.steerable) return;
  if (!state.steering.has(index)) state.steering.set(index, { label, alpha });
  renderSteering();
  const slider = document.querySelector(`#steering input[data-index="${index}"]`);
  if (slider) slider.focus();
}

function renderSteering() {
  const list = $("#steering");
  list.replaceChildren();
  for (const [index, item] of state.steering) {
    const value = el("output", { class: "value" }, item.alpha.toFixed(1));
    const slider = el("input", {
      type: "range", min: "-10", max: "10", step: "0.5", value: String(item.alpha),
      "data-index": String(index), "aria-label": `alpha for ${item.label || index}`,
      oninput: (e) => { item.alpha = parseFloat(e.target.value); value.textContent = item.alpha.toFixed(1); },
    });
    list.append(el("div", { class: "steer-row" },
      el("span", { class: "name" }, conceptName(index, item.label), " ", el("small", {}, `#${index}`)),
      slider, value,
      el("button", { "aria-label": `remove ${item.label || index}`,
                     onclick: () => { state.steering.delete(index); renderSteering(); } }, "×")));
  }
  if (!state.steering.size) list.append(el("p", { class: "muted" }, "Click “steer” on a concept to add it."));
  $("#generate-steered").disabled = !state.steering.size || state.busy;
}

async function busy(work) {
  if (state.busy) return;
  state.busy = true;
  $("#generate").disabled = true;
  $("#generate-steered").disabled = true;
  showError("");
  try { await work(); } catch (e) { showError(e.message); } finally {
    state.busy = false;
    $("#generate").disabled = false;
    $("#generate-steered").disabled = !state.steering.size;
  }
}

function generate() {
  return busy(async () => {
    const body = settings();
    $("#live").hidden = false;
    $("#tokens").replaceChildren();
    const { text, usage } = await streamInto($("#live"), body);
    if (state.info.kind === "plain") return;
    const concepts = await api("/v1/concepts", { text: body.prompt + text, top: 8 });
    renderTokens(concepts.data, usage ? usage.prompt_tokens : 0);
    document.body.dataset.generated = "1";
  });
}

function generateSteered() {
  return busy(async () => {
    const body = settings();
    const steer = Object.fromEntries([...state.steering].map(([i, s]) => [String(i), s.alpha]));
    $("#compare").hidden = false;
    $("#steer-summary").textContent = [...state.steering]
      .map(([i, s]) => `${s.label || "#" + i} ×${s.alpha}`).join(", ");  // e.g. "whale ×8"
    $("#compare-note").textContent = "";
    const plain = await streamInto($("#plain"), body);
    const steered = await streamInto($("#steered"), { ...body, steer, span: $("#span").value });
    $("#compare-note").textContent = plain.text === steered.text
      ? "The steered text is the same as the plain one: try a larger α or another concept."
      : `Same seed (${body.seed}); the texts differ.`;
    document.body.dataset.compared = plain.text === steered.text ? "same" : "different";
  });
}

function marked(text) {
  const node = el("span");
  text.split(/(«[^»]*»)/).forEach((part) => node.append(
    part.startsWith("«") ? el("mark", {}, part.slice(1, -1)) : part));
  return node;
}

let searchTimer = null;
function search() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const q = $("#search").value;
    try {
      const found = await api(`/v1/dictionary?q=${encodeURIComponent(q)}&limit=25`);
      const list = $("#results");
      list.replaceChildren();
      for (const item of found.data) {
        const contexts = el("div", { class: "contexts" });
        const needle = q.trim().toLowerCase();
        const shown = [...(item.contexts || [])].sort((a, b) =>
          b.text.toLowerCase().includes(needle) - a.text.toLowerCase().includes(needle));
        shown.slice(0, 2).forEach((c) => contexts.append(marked(c.text), el("br")));
        if (item.promoted) contexts.append(`promotes: ${item.promoted.join(" ")}`);
        list.append(el("div", { class: "result" },
          el("span", { class: "name" }, item.label, " ", el("small", {},
             `#${item.index} · ${(100 * (item.frequency || 0)).toFixed(2)}% of tokens`)),
          el("button", { "aria-label": `steer ${item.label}`, onclick: () => addSteer(item.index, item.label) }, "steer"),
          contexts));
      }
      if (!found.data.length) {
        list.append(el("p", { class: "muted" }, state.info.dictionary
          ? "no match" : "no dictionary loaded (serve with --concepts FILE from `cocomix sae describe`)"));
      }
    } catch (e) { showError(e.message); }
  }, 150);
}

async function start() {
  try {
    state.info = await api("/v1/studio");
  } catch (e) { showError(e.message); return; }
  const info = state.info;
  const what = { cocomix: `CoCoMix, ${info.concepts} concepts`,
                 sae: `SAE latents at block ${info.layer}, ${info.concepts} concepts`,
                 plain: "no concepts (serve a CoCoMix model, or add --sae)" }[info.kind];
  $("#model").textContent = `${info.model} — ${what}; context ${info.context} tokens`;
  $("#generate").addEventListener("click", generate);
  $("#generate-steered").addEventListener("click", generateSteered);
  $("#prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  $("#search").addEventListener("input", search);
  search();
  document.body.dataset.ready = "1";
}

start();
