// The page of `medrag serve`: pick or upload an image, ask, read the cited answer beside its evidence.
// Everything goes through the same /api/ calls a program makes; images are fetched with the token
// (an <img src> cannot send one) and shown from blob: URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("medrag-token") || "", image: null, imageName: "" };

// A token given as /#token=... is kept for this tab and removed from the address bar.
if (location.hash.startsWith("#token=")) {
  state.token = decodeURIComponent(location.hash.slice(7));
  sessionStorage.setItem("medrag-token", state.token);
  history.replaceState(null, "", location.pathname);
}

async function api(path, options = {}) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) $("token-form").hidden = false;
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const data = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.detail || `HTTP ${response.status}`);
  return data;
}

async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// --- loading state -------------------------------------------------------------------------------

async function watchHealth() {
  const status = $("status");
  try {
    const response = await api("/api/health");
    const data = await response.json();
    status.className = `status ${data.status || "failed"}`;
    if (data.status === "ready") {
      status.textContent = `ready · ${data.documents} documents · ${data.version}`;
      $("ask").disabled = false;
      loadExamples();  // the index's documents are known once it has loaded
      return;
    }
    status.textContent = data.status === "loading" ? "loading the model…" : (data.detail || data.error || "unavailable");
  } catch (err) {
    status.className = "status failed";
    status.textContent = "server unreachable";
  }
  if (!$("token-form").hidden) return;  // waits for a token instead of polling
  setTimeout(watchHealth, 1000);
}

async function loadExamples() {
  const box = $("examples");
  box.replaceChildren();
  let examples = [];
  try { examples = await apiJson("/api/examples?per_domain=2"); } catch (err) { return; }
  for (const example of examples) {
    const img = el("img", { alt: `${example.title} (${example.domain})` });
    const button = el("button", { type: "button", title: `${example.title} (${example.domain})`,
                                  "data-id": example.id }, img);
    blobUrl(example.image).then((url) => { img.src = url; }).catch(() => {});
    button.addEventListener("click", () => chooseExample(button, example));
    box.append(button);
  }
}

// --- the image -----------------------------------------------------------------------------------

async function chooseExample(button, example) {
  const response = await api(example.image);
  if (!response.ok) return showError(`could not load the example image (HTTP ${response.status})`);
  setImage(await response.blob(), `${example.id} (example)`);
  for (const other of $("examples").children) other.classList.toggle("selected", other === button);
}

function setImage(blob, name) {
  state.image = blob;
  state.imageName = name;
  $("preview").hidden = !blob;
  if (blob) {
    $("preview-img").src = URL.createObjectURL(blob);
    $("preview-name").textContent = name;
  } else {
    $("image").value = "";
    for (const other of $("examples").children) other.classList.remove("selected");
  }
}

// --- options -------------------------------------------------------------------------------------

function addOption(value = "") {
  const input = el("input", { type: "text", name: "option", placeholder: `option ${$("options").children.length + 1}` });
  input.value = value;
  const remove = el("button", { type: "button", class: "small", title: "remove this option" }, "×");
  const row = el("div", { class: "option" }, input, remove);
  remove.addEventListener("click", () => row.remove());
  $("options").append(row);
  return input;
}

// --- asking --------------------------------------------------------------------------------------

function askForm(retrieval) {
  const form = new FormData();
  form.append("question", $("question").value);
  for (const input of $("options").querySelectorAll("input")) {
    if (input.value.trim()) form.append("options", input.value.trim());
  }
  form.append("retrieval", retrieval ? "true" : "false");
  if (state.image) form.append("image", state.image, state.imageName.replace(/[^\w.-]+/g, "_") || "image");
  return form;
}

async function ask(event) {
  event.preventDefault();
  showError("");
  $("ask").disabled = true;
  const compare = $("compare").checked;
  const started = performance.now();
  try {
    const answer = await apiJson("/api/ask", { method: "POST", body: askForm(true) });
    renderAnswer($("answer-rag"), answer, "rag");
    renderEvidence(answer);
    $("results").hidden = false;
    // For the browser test and the curious: when the first answer was on screen, since page load.
    document.body.dataset.answeredAtMs = String(Math.round(performance.now()));
    document.body.dataset.askMs = String(Math.round(performance.now() - started));
    const retrieval = askRetrieval();
    $("answer-bare").hidden = !compare;
    if (compare) {
      $("answer-bare").querySelector(".body").replaceChildren(el("p", { class: "meta" }, "answering…"));
      renderAnswer($("answer-bare"), await apiJson("/api/ask", { method: "POST", body: askForm(false) }), "bare");
    }
    await retrieval;
  } catch (err) {
    showError(err.message);
  } finally {
    $("ask").disabled = false;
  }
}

async function askRetrieval() {
  const form = new FormData();
  form.append("question", $("question").value);
  if (state.image) form.append("image", state.image, "image");
  renderRanking(await apiJson("/api/retrieve", { method: "POST", body: form }));
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message;
}

// --- rendering -----------------------------------------------------------------------------------

// The answer's text with each [n] turned into a link to evidence card n.
function citedText(text, panel) {
  const out = el("p", { class: "text" });
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    out.append(text.slice(last, match.index));
    const n = match[1];
    const link = el("a", { href: `#ev-${n}`, class: "cite", "data-n": n, "data-panel": panel }, `[${n}]`);
    link.addEventListener("click", (event) => { event.preventDefault(); focusCard(n); });
    out.append(link);
    last = match.index + match[0].length;
  }
  out.append(text.slice(last));
  return out;
}

function focusCard(n) {
  const card = $(`ev-${n}`);
  if (!card) return;
  for (const other of document.querySelectorAll(".card.highlight")) other.classList.remove("highlight");
  card.classList.add("highlight");
  card.scrollIntoView({ behavior: "smooth", block: "center" });
}

function renderAnswer(article, answer, panel) {
  article.classList.toggle("abstained", answer.abstained);
  const meta = [];
  if (answer.domain) meta.push(`routed to ${answer.domain} (${answer.domain_confidence.toFixed(2)})`);
  meta.push(answer.abstained ? "abstained: the evidence is too weak" : `mode ${answer.mode}`);
  if (answer.selection) meta.push(`kept ${answer.evidence.length}: ${answer.selection}`);
  meta.push(`${Math.round(answer.timings_ms.total)} ms on the server`);
  const cites = answer.citations.map((c) => `[${c.number}] ${c.evidence_id} (${citationLabel(c)})`).join(", ");
  article.querySelector(".body").replaceChildren(
    citedText(answer.text, panel),
    el("p", { class: "meta" }, meta.join(" · ")),
    ...(cites ? [el("p", { class: "meta" }, `cites ${cites}`)] : []));
}

// As rag.pipeline.Citation.label: how the citation came about, and a model citation of an item that
// does not state the answer when another kept item does.
function citationLabel(c) {
  return c.how + (c.states_answer === false ? ", does not state the answer" : "");
}

function renderEvidence(answer) {
  const cited = new Map(answer.citations.map((c) => [c.number, citationLabel(c)]));
  const cards = answer.evidence.map((e) => {
    const img = el("img", { alt: e.title });
    blobUrl(`/api/evidence/${encodeURIComponent(e.id)}/image`).then((url) => { img.src = url; }).catch(() => img.remove());
    const how = cited.has(e.number) ? ` · cited (${cited.get(e.number)})` : "";
    return el("div", { id: `ev-${e.number}`, class: `card${cited.has(e.number) ? " cited" : ""}` },
      img,
      el("div", {},
        el("div", {}, el("span", { class: "num" }, `[${e.number}] `), el("span", { class: "title" }, e.title)),
        el("div", { class: "facts" }, `${e.domain} · score ${e.score.toFixed(4)} · ${e.id}${how}`),
        el("div", { class: "snippet" }, e.snippet)));
  });
  $("evidence").replaceChildren(...(cards.length ? cards : [el("p", { class: "meta" }, "no evidence kept")]));
}

function renderRanking(result) {
  const r = result.routing;
  const probs = Object.entries(r.probabilities).map(([d, p]) => el("span", {}, `${d} ${p.toFixed(2)}`));
  $("routing").replaceChildren(
    el("p", {}, `Routed to ${r.domain} (confidence ${r.confidence.toFixed(2)}, ${r.mode}); searched ${r.searched.join(", ")}; `
      + `channels ${result.channels.join(", ")}.`),
    el("div", { class: "probs" }, ...probs));
  const items = [];
  result.hits.forEach((hit, i) => {
    if (i === result.selection.k) {
      items.push(el("li", { class: "cut" }, `selection cut here, kept ${result.selection.k} (${result.selection.rule}): ${result.selection.reason}`));
    }
    // explicit rank: the cut line between the items is a list item too
    items.push(el("li", { class: i < result.selection.k ? "kept" : "", value: String(i + 1) },
      `${hit.score.toFixed(4)} · ${hit.id} · ${hit.title || ""} (${hit.domain || ""})`));
  });
  $("ranking").replaceChildren(...items);
}

// --- start ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", ask);
  $("add-option").addEventListener("click", () => addOption().focus());
  $("clear-image").addEventListener("click", () => setImage(null, ""));
  $("image").addEventListener("change", () => {
    const file = $("image").files[0];
    if (file) {
      for (const other of $("examples").children) other.classList.remove("selected");
      setImage(file, file.name);
    }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value;
    sessionStorage.setItem("medrag-token", state.token);
    $("token-form").hidden = true;
    watchHealth();
  });
  addOption();
  watchHealth();
});
