// clipsearch web page: text, drawing and image queries against /api/v1. No build step.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
const state = { lastQuery: null, busy: 0, sequence: 0 };

// --- API calls -------------------------------------------------------------

function apiHeaders() {
  const key = localStorage.getItem("clipsearch.apiKey");
  return key ? { "x-api-key": key } : {};
}

async function call(path, init) {
  const response = await fetch(API + path, { ...init, headers: { ...apiHeaders(), ...(init && init.headers) } });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401) $("api-key-wrap").hidden = false;
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
    throw new Error(detail);
  }
  return body;
}

function options() {
  const fields = { k: Number($("k").value) };
  const label = $("label-filter").value;
  if (label !== "") fields.filter = { label: Number(label) };
  return fields;
}

function searchText(query) {
  return call("/search/text", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ query, ...options() }),
  });
}

function searchUpload(kind, blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  const fields = options();
  form.append("k", String(fields.k));
  if (fields.filter) form.append("filter", JSON.stringify(fields.filter));
  return call(`/search/${kind}`, { method: "POST", body: form });
}

// --- results ---------------------------------------------------------------

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function describe(payload) {
  if (payload.label !== undefined) return `label ${payload.label}`;
  if (payload.class_name) return payload.class_name;
  if (payload.caption) return payload.caption;
  return "";
}

function render(result) {
  const grid = $("grid");
  grid.replaceChildren();
  for (const [rank, hit] of result.hits.entries()) {
    const item = document.createElement("li");
    item.className = "card";
    item.dataset.id = hit.id;
    const figure = document.createElement("figure");
    if (hit.image_url) {
      const img = document.createElement("img");
      img.src = hit.image_url;
      img.alt = describe(hit.payload) || `result ${rank + 1}`;
      img.loading = "lazy";
      img.decoding = "async";
      figure.append(img);
    } else {
      const none = document.createElement("div");
      none.className = "no-image";
      none.textContent = "no image";
      figure.append(none);
    }
    const caption = document.createElement("figcaption");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = describe(hit.payload);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    score.title = "cosine similarity";
    caption.append(label, score);
    figure.append(caption);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.setProperty("--w", `${Math.max(0, Math.min(1, hit.score)) * 100}%`);
    item.append(figure, bar);
    grid.append(item);
  }
  const count = result.hits.length;
  setStatus(count
    ? `${count} result${count === 1 ? "" : "s"} in ${result.took_ms.toFixed(1)} ms · ${result.model} · ${result.collection}`
    : "No results.");
}

// Runs one query; answers of superseded queries are dropped.
async function run(query) {
  state.lastQuery = query;
  const mine = ++state.sequence;
  document.body.classList.add("busy");
  setStatus("Searching…");
  try {
    const result = await query();
    if (mine === state.sequence) render(result);
  } catch (error) {
    if (mine === state.sequence) setStatus(error.message, true);
  } finally {
    if (mine === state.sequence) document.body.classList.remove("busy");
  }
}

// --- tabs --------------------------------------------------------------------

function showTab(name) {
  for (const tab of ["text", "draw", "image"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`pane-${tab}`).hidden = tab !== name;
  }
  if (name === "text") $("text-query").focus();
}

// --- drawing -----------------------------------------------------------------

function setUpCanvas() {
  const canvas = $("sketch");
  const context = canvas.getContext("2d", { willReadFrequently: false });
  let drawing = null; // the pointer id drawing now
  let last = null;
  let dirty = false;
  let timer = null;

  const clear = () => {
    // White first, so the exported PNG is black strokes on white, as the encoder expects.
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    dirty = false;
  };
  const point = (event) => {
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * canvas.width,
      y: ((event.clientY - rect.top) / rect.height) * canvas.height,
    };
  };
  const stroke = (from, to) => {
    context.strokeStyle = "#000000";
    context.lineWidth = Number($("stroke-width").value);
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
  };

  canvas.addEventListener("pointerdown", (event) => {
    if (drawing !== null) return;
    event.preventDefault();
    drawing = event.pointerId;
    canvas.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
    dirty = true;
    clearTimeout(timer);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== drawing) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of events.length ? events : [event]) {
      const next = point(each);
      stroke(last, next);
      last = next;
    }
  });
  const end = (event) => {
    if (event.pointerId !== drawing) return;
    drawing = null;
    if ($("auto-search").checked) {
      clearTimeout(timer);
      timer = setTimeout(searchSketch, 350);
    }
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  const searchSketch = () => {
    if (!dirty) {
      setStatus("Draw something first.", true);
      return;
    }
    run(() => new Promise((resolve, reject) => {
      canvas.toBlob((blob) => (blob ? searchUpload("sketch", blob, "sketch.png").then(resolve, reject)
        : reject(new Error("could not export the drawing"))), "image/png");
    }));
  };

  $("clear-canvas").addEventListener("click", () => { clearTimeout(timer); clear(); });
  $("sketch-submit").addEventListener("click", searchSketch);
  $("stroke-width").addEventListener("input", (event) => { $("stroke-value").textContent = event.target.value; });
  clear();
}

// --- image upload ---------------------------------------------------------------

function setUpUpload() {
  const input = $("image-file");
  const drop = $("drop");
  const use = (file) => {
    if (!file) return;
    const preview = $("image-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    $("drop-hint").textContent = file.name;
    run(() => searchUpload("image", file, file.name));
  };
  input.addEventListener("change", () => use(input.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    use(event.dataTransfer.files[0]);
  });
}

// --- what is searched -------------------------------------------------------------

async function loadInfo() {
  try {
    const info = await call("/info", {});
    const model = info.model;
    const collection = info.collection;
    $("model-badge").textContent = model ? `model ${model.name} · ${model.fingerprint.slice(0, 8)}` : "model unavailable";
    $("model-badge").classList.toggle("warn", !model);
    $("model-badge").classList.remove("muted");
    $("collection-badge").textContent = collection
      ? `${collection.alias} · ${collection.count.toLocaleString()} items` : "collection unavailable";
    $("collection-badge").classList.toggle("warn", !collection);
    $("collection-badge").classList.remove("muted");
    if (info.problems && info.problems.length) $("about").textContent = info.problems.join(" · ");
    const labels = collection && collection.class_names && collection.class_names.length
      ? collection.class_names : (collection && /mnist/i.test(collection.alias) ? [..."0123456789"] : []);
    if (labels.length) {
      const select = $("label-filter");
      for (const [index, name] of labels.entries()) {
        const option = document.createElement("option");
        option.value = /^\d+$/.test(name) ? name : String(index);
        option.textContent = name;
        select.append(option);
      }
      $("label-filter-wrap").hidden = false;
    }
  } catch (error) {
    $("model-badge").textContent = "gateway unavailable";
    $("model-badge").classList.add("warn");
    $("about").textContent = error.message;
  }
}

// --- start -------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of ["text", "draw", "image"]) $(`tab-${tab}`).addEventListener("click", () => showTab(tab));
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("text-query").value.trim();
    if (!query) { setStatus("Type something to search for.", true); return; }
    run(() => searchText(query));
  });
  $("k").addEventListener("change", () => state.lastQuery && run(state.lastQuery));
  $("label-filter").addEventListener("change", () => state.lastQuery && run(state.lastQuery));
  const key = $("api-key");
  key.value = localStorage.getItem("clipsearch.apiKey") || "";
  key.addEventListener("change", () => { localStorage.setItem("clipsearch.apiKey", key.value); loadInfo(); });
  setUpCanvas();
  setUpUpload();
  loadInfo();
});
