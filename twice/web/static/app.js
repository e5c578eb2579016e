"use strict";
const form = document.getElementById("upload-form");
const input = document.getElementById("image");
const drop = document.getElementById("drop");
const preview = document.getElementById("preview");
const message = document.getElementById("message");
const results = document.getElementById("results");
const searchButton = document.getElementById("search-button");
const addButton = document.getElementById("add-button");
let chosen = null;

function say(text, isError) {
  message.textContent = text;
  message.className = isError ? "error" : "";
}

function choose(file) {
  if (!file) return;
  chosen = file;
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  searchButton.disabled = addButton.disabled = false;
  say(`${file.name} (${Math.round(file.size / 1024)} KiB)`);
}

input.addEventListener("change", () => choose(input.files[0]));
["dragenter", "dragover"].forEach(type => drop.addEventListener(type, event => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach(type => drop.addEventListener(type, () => drop.classList.remove("over")));
drop.addEventListener("drop", event => {
  event.preventDefault();
  choose(event.dataTransfer.files[0]);
});

// The API token lives in this tab's sessionStorage only: it goes with requests once the
// server has asked for it (401), which by default only "Add to index" does.
const TOKEN_KEY = "twice-api-token";
const tokenRow = document.getElementById("token-row");
const tokenInput = document.getElementById("token");

function withToken(options) {
  const typed = tokenInput.value.trim();
  if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return options;
  return {...options, headers: {...(options.headers || {}), Authorization: `Bearer ${token}`}};
}

async function call(url, options) {
  const response = await fetch(url, withToken(options));
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenInput.value = "";
    tokenRow.hidden = false;
    tokenInput.focus();
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const error = body && body.error ? body.error : {code: response.status, message: response.statusText};
    throw new Error(`${error.message} (${error.code})`);
  }
  return body;
}

function upload() {
  const data = new FormData();
  data.append("image", chosen, chosen.name);
  return data;
}

function card(hit, rank) {
  const item = document.createElement("li");
  item.className = "result";
  item.dataset.id = hit.id;
  item.dataset.verdict = hit.verdict;
  const link = document.createElement("a");
  link.href = hit.file_url;
  link.target = "_blank";
  const img = document.createElement("img");
  img.src = hit.thumb_url;
  img.alt = `#${hit.id}`;
  img.loading = "lazy";
  link.appendChild(img);
  const meta = document.createElement("div");
  meta.className = "meta";
  const top = document.createElement("div");
  top.className = "top";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `${rank}. ${hit.score.toFixed(4)}${hit.exact ? " · same bytes" : ""}`;
  const badge = document.createElement("span");
  badge.className = `badge ${hit.verdict}`;
  badge.textContent = hit.verdict;
  top.append(score, badge);
  const source = document.createElement("div");
  source.className = "source";
  source.textContent = hit.source;
  source.title = hit.source;
  const facts = document.createElement("div");
  facts.className = "source";
  facts.textContent = `#${hit.id} · ${hit.width}×${hit.height} ${hit.format}` +
    (hit.transform ? ` · ${hit.transform} of #${hit.parent_id}` : "");
  const evidence = document.createElement("div");
  evidence.className = "evidence";
  evidence.textContent = hit.evidence.summary;
  meta.append(top, source, facts);
  const verified = hit.evidence.verification;
  if (verified && verified.verified) {  // how the copy was made, in words
    const edit = document.createElement("div");
    edit.className = "edit";
    edit.textContent = `edit: ${verified.explanation}`;
    meta.append(edit);
  }
  meta.append(evidence);
  item.append(link, meta);
  return item;
}

// One line of evidence, as `twice search` prints it (twice/commands.py, why): which signals
// fired and how strongly, and which decided the verdict.
function show(response) {
  results.replaceChildren(...response.results.map((hit, i) => card(hit, i + 1)));
  const t = response.thresholds;
  say(`${response.results.length} results in ${Math.round(response.took_ms)} ms · model ${response.model}` +
      ` · duplicate ≥ ${t.duplicate}, similar ≥ ${t.similar}`);
}

form.addEventListener("submit", async event => {
  event.preventDefault();
  if (!chosen) return;
  searchButton.disabled = true;
  say("searching…");
  try {
    show(await call(`/search?k=${document.getElementById("k").value}`, {method: "POST", body: upload()}));
  } catch (error) {
    results.replaceChildren();
    say(error.message, true);
  } finally {
    searchButton.disabled = false;
  }
});

addButton.addEventListener("click", async () => {
  if (!chosen) return;
  addButton.disabled = true;
  try {
    const added = await call("/images", {method: "POST", body: upload()});
    const note = added.match === "exact" ? "already indexed (same bytes)"
      : added.match === "duplicate" ? `added, a duplicate of #${added.duplicate_of.id}` : "added";
    say(`#${added.id}: ${note}`);
    refreshHealth();
  } catch (error) {
    const hint = tokenRow.hidden ? "" : " · enter an API token above, then press Add to index again";
    say(error.message + hint, true);
  } finally {
    addButton.disabled = false;
  }
});

async function refreshHealth() {
  const health = document.getElementById("health");
  try {
    const response = await fetch("/health");
    const body = await response.json();
    health.textContent = body.status === "ok"
      ? `${body.index.vectors} images indexed · model ${body.model.version}`
      : `not ready: ${body.reason}`;
  } catch (_) {
    health.textContent = "service unreachable";
  }
}
refreshHealth();
