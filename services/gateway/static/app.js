// clipsearch web page: text, drawing and image queries against /api/v1, over every collection the
// gateway serves. The collection, the filters and the query live in the URL (a drawing as its strokes
// in the fragment), so a search can be shared and the back button works. No build step.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
const DEFAULT_K = "24";
// Images this small are pixels to look at (MNIST's 28x28), shown as squares; larger ones are smoothed.
const PIXEL_ART_MAX = 48;
// "You drew": the first distinct names among the hits, no second request. Not a search over caption
// vectors: with the emoji model, a drawing's image hits name an accepted concept among their first
// names far more often than its caption hits do (measured: the README's page section).
const DREW_NAMES = 5;
// Pen width per sketch normalisation: MNIST's model wants thick strokes; line art is thinned anyway.
const PEN_WIDTH = { "line-art": 8 };
const DEFAULT_PEN = 20;
// URL parameters that are not filter fields.
const RESERVED = new Set(["collection", "q", "k"]);

const state = {
  collections: new Map(), // name -> the collection as GET /collections lists it
  defaultCollection: null,
  collection: null, // the selected name (null: the gateway's default)
  query: null, // { kind: "text", text } | { kind: "sketch", strokes } | { kind: "image", file }
  sequence: 0, // answers of superseded queries are dropped
  drawingEntry: false, // the current history entry is the drawing in progress (replaced as it grows)
  penTouched: false,
  pixelated: new Map(), // collection -> whether its images are pixel art (learnt from the first one)
  sketch: null, // the canvas (setUpCanvas)
};

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

// The search fields every query sends: the collection, k, the filter.
function searchFields() {
  const fields = { k: Number($("k").value) };
  if (state.collection) fields.collection = state.collection;
  const filter = currentFilter();
  if (Object.keys(filter).length) fields.filter = filter;
  return fields;
}

function searchText(text, fields) {
  return call("/search/text", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ query: text, ...fields }),
  });
}

function searchUpload(kind, blob, name, fields) {
  const form = new FormData();
  form.append("file", blob, name);
  for (const [field, value] of Object.entries(fields)) {
    form.append(field, typeof value === "object" ? JSON.stringify(value) : String(value));
  }
  return call(`/search/${kind}`, { method: "POST", body: form });
}

// --- collections -------------------------------------------------------------------

function current() {
  return state.collections.get(state.collection || state.defaultCollection) || null;
}

async function loadCollections() {
  try {
    const body = await call("/collections", {});
    state.defaultCollection = body.default_collection;
    state.collections = new Map(body.collections.map((c) => [c.name, c]));
    if (!state.collections.has(body.default_collection)) {
      state.collections.set(body.default_collection, unlisted(body.default_collection, "not indexed yet"));
    }
    $("about").textContent = "Search by text, drawing or image.";
  } catch (error) {
    $("about").textContent = `Collections unavailable: ${error.message}`;
    $("model-badge").textContent = "gateway unavailable";
    $("model-badge").classList.replace("muted", "warn");
  }
  fillPicker();
}

function unlisted(name, problem) {
  return { name, model: null, fingerprint: "", points: 0, targets: [], filter_fields: {}, ready: false, problem };
}

function fillPicker() {
  const select = $("collection");
  select.replaceChildren();
  for (const c of state.collections.values()) {
    const option = document.createElement("option");
    option.value = c.name;
    // Unavailable collections stay listed: picking one shows why it cannot answer.
    option.textContent = c.ready ? `${c.name} · ${c.points.toLocaleString()} items` : `${c.name} · unavailable`;
    if (c.problem) option.title = c.problem;
    select.append(option);
  }
}

// Makes `name` the collection searched (null: the default) and shows what it is.
function selectCollection(name) {
  const wanted = name || state.defaultCollection;
  if (wanted && !state.collections.has(wanted) && state.defaultCollection !== null) {
    state.collections.set(wanted, unlisted(wanted, `the gateway lists no collection ${wanted}`));
    fillPicker();
  }
  state.collection = wanted;
  if (wanted) $("collection").value = wanted;
  const c = current();
  const modelBadge = $("model-badge");
  const collectionBadge = $("collection-badge");
  if (c) {
    modelBadge.textContent = c.model
      ? `model ${c.model}${c.fingerprint ? ` · ${c.fingerprint.slice(0, 8)}` : ""}` : "model unknown";
    collectionBadge.textContent = `${c.name} · ${c.points.toLocaleString()} items`;
    for (const badge of [modelBadge, collectionBadge]) {
      badge.classList.remove("muted");
      badge.classList.toggle("warn", !c.ready);
    }
  }
  const problem = $("collection-problem");
  problem.textContent = c && !c.ready ? `Unavailable: ${c.problem || "unknown problem"}` : "";
  problem.hidden = !(c && !c.ready);
  buildFilters(c);
  showCredits(c);
  if (!state.penTouched) setPen((c && PEN_WIDTH[c.sketch_normalization]) || DEFAULT_PEN);
}

// --- filters ---------------------------------------------------------------------

// One select per payload field the collection lists a few values for (emoji: style, group; MNIST: label).
function buildFilters(c) {
  const container = $("filters");
  const previous = currentFilter();
  container.replaceChildren();
  if (!c) return;
  const shown = new Set(); // fields with the same values as one already shown (MNIST's label, class_name)
  for (const [field, values] of Object.entries(c.filter_fields || {})) {
    if (!Array.isArray(values) || values.length < 2 || RESERVED.has(field)) continue;
    const signature = values.map(String).join("\u0000");
    if (shown.has(signature)) continue;
    shown.add(signature);
    const label = document.createElement("label");
    label.textContent = `Only ${field.replace(/_/g, " ")}`;
    const select = document.createElement("select");
    select.id = `filter-${field}`;
    select.dataset.field = field;
    const any = document.createElement("option");
    any.value = "";
    any.textContent = "any";
    select.append(any);
    for (const value of values) {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = String(value);
      select.append(option);
    }
    // A value the new collection also has stays chosen (an option it lacks leaves "any").
    if (field in previous) select.value = String(previous[field]);
    select.addEventListener("change", () => rerun("push"));
    label.append(select);
    container.append(label);
  }
}

// The filter the selects give, values typed as the collection lists them (labels are numbers).
function currentFilter() {
  const filter = {};
  const c = current();
  for (const select of $("filters").querySelectorAll("select[data-field]")) {
    if (select.value === "") continue;
    const field = select.dataset.field;
    const values = (c && c.filter_fields && c.filter_fields[field]) || [];
    const typed = values.find((value) => String(value) === select.value);
    filter[field] = typed === undefined ? select.value : typed;
  }
  return filter;
}

function setFilters(params) {
  for (const select of $("filters").querySelectorAll("select[data-field]")) {
    const wanted = params.get(select.dataset.field);
    select.value = wanted !== null && [...select.options].some((o) => o.value === wanted) ? wanted : "";
  }
}

// --- credits ------------------------------------------------------------------------

// The credits the collection's images' licences ask for, with their addresses as links.
function showCredits(c) {
  const credits = $("credits");
  credits.replaceChildren();
  const text = c && c.attribution;
  credits.hidden = !text;
  if (!text) return;
  for (const [index, part] of text.split(/(https?:\/\/[^\s,;)]+)/).entries()) {
    if (index % 2 === 0) { credits.append(part); continue; }
    const link = document.createElement("a");
    link.href = part;
    link.textContent = part.replace(/^https?:\/\//, "");
    link.rel = "noopener noreferrer";
    credits.append(link);
  }
}

// --- results ---------------------------------------------------------------

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

// The name of a hit: an MNIST digit keeps its "label 7"; a named item (emoji) shows its name.
function describe(payload) {
  const name = payload.class_name;
  if (payload.label !== undefined && (name === undefined || String(name) === String(payload.label))) {
    return `label ${payload.label}`;
  }
  if (name) return String(name);
  if (payload.caption) return String(payload.caption);
  return "";
}

function nameOf(payload) {
  const name = payload.class_name ?? payload.caption ?? payload.label;
  return name === undefined || name === null ? "" : String(name);
}

function render(result) {
  const grid = $("grid");
  grid.replaceChildren();
  const collection = result.collection;
  const known = state.pixelated.get(collection);
  for (const [rank, hit] of result.hits.entries()) {
    const item = document.createElement("li");
    item.className = "card";
    item.dataset.id = hit.id;
    const name = describe(hit.payload);
    item.title = [name, hit.payload.style, hit.payload.group].filter(Boolean).join(" · ");
    const figure = document.createElement("figure");
    if (hit.image_url) {
      const img = document.createElement("img");
      if (known !== undefined) img.classList.toggle("pixelated", known);
      img.addEventListener("load", () => {
        const pixelated = img.naturalWidth <= PIXEL_ART_MAX;
        img.classList.toggle("pixelated", pixelated);
        state.pixelated.set(collection, pixelated);
      });
      img.src = hit.image_url;
      img.alt = name || `result ${rank + 1}`;
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
    label.textContent = name;
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
  const normalised = result.normalization && result.normalization !== "none"
    ? ` · normalised: ${result.normalization}` : "";
  setStatus(count
    ? `${count} result${count === 1 ? "" : "s"} in ${result.took_ms.toFixed(1)} ms · ${result.model} · ${result.collection}${normalised}`
    : "No results.");
}

// Distinct names in rank order, at most `limit`.
function topNames(hits, limit) {
  const names = [];
  for (const hit of hits) {
    const name = nameOf(hit.payload);
    if (name && !names.includes(name)) names.push(name);
    if (names.length === limit) break;
  }
  return names;
}

// "You drew: bell, bell with slash, …": each name searches for itself as text.
function showDrew(names) {
  const drew = $("drew");
  drew.replaceChildren();
  drew.hidden = !names || !names.length;
  if (drew.hidden) return;
  drew.append("You drew: ");
  for (const [index, name] of names.entries()) {
    if (index) drew.append(", ");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "name";
    button.textContent = name;
    button.title = `search for “${name}”`;
    button.addEventListener("click", () => {
      $("text-query").value = name;
      showTab("text", false);
      search({ kind: "text", text: name }, "push");
    });
    drew.append(button);
  }
}

async function execute(query, fields) {
  if (query.kind === "text") return searchText(query.text, fields);
  if (query.kind === "image") return searchUpload("image", query.file, query.file.name || "image", fields);
  return searchUpload("sketch", await state.sketch.blob(), "sketch.png", fields);
}

// Runs one query; a drawing's answer also names what it looks like.
async function run(query) {
  const mine = ++state.sequence;
  state.query = query;
  document.body.classList.add("busy");
  setStatus("Searching…");
  try {
    const result = await execute(query, searchFields());
    if (mine !== state.sequence) return;
    render(result);
    showDrew(query.kind === "sketch" ? topNames(result.hits, DREW_NAMES) : null);
  } catch (error) {
    if (mine === state.sequence) {
      setStatus(error.message, true);
      showDrew(null);
    }
  } finally {
    if (mine === state.sequence) document.body.classList.remove("busy");
  }
}

// --- the URL: collection, query, filters, k (a drawing's strokes in the fragment) ---------------

function urlFor(query) {
  const params = new URLSearchParams();
  if (state.collection) params.set("collection", state.collection);
  if (query && query.kind === "text") params.set("q", query.text);
  for (const [field, value] of Object.entries(currentFilter())) params.set(field, String(value));
  if ($("k").value !== DEFAULT_K) params.set("k", $("k").value);
  const search = params.toString();
  const hash = query && query.kind === "sketch" ? `#sketch=${encodeStrokes(query.strokes)}` : "";
  return `${location.pathname}${search ? `?${search}` : ""}${hash}`;
}

// Records where the page is: "push" a new history entry, "replace" the current one, or "none".
function remember(query, how) {
  if (how === "none") return;
  const url = urlFor(query);
  // An uploaded image cannot go in a link, but the history entry can hold the file itself.
  const entry = query && query.kind === "image" ? { image: query.file } : null;
  if (how === "push" && !entry && url === location.pathname + location.search + location.hash) return;
  const method = how === "push" ? "pushState" : "replaceState";
  try {
    history[method](entry, "", url);
  } catch (_) {
    history[method](null, "", url); // a file the browser cannot keep in history
  }
}

function search(query, how) {
  state.drawingEntry = false;
  remember(query, how);
  return run(query);
}

// The same query again with the current collection, filters and k.
function rerun(how) {
  if (state.query && state.query.kind === "sketch") {
    const strokes = state.sketch.strokes();
    state.query = strokes.length ? { kind: "sketch", strokes } : null;
  }
  if (state.query) search(state.query, how);
  else remember(null, how);
}

// Shows what the URL (and the history entry) says, and runs its query.
function applyLocation(entry) {
  const params = new URLSearchParams(location.search);
  selectCollection(params.get("collection"));
  const k = params.get("k");
  $("k").value = k && [...$("k").options].some((o) => o.value === k) ? k : DEFAULT_K;
  setFilters(params);
  state.drawingEntry = false;
  const text = params.get("q");
  const drawing = new URLSearchParams(location.hash.slice(1)).get("sketch");
  if (text) {
    $("text-query").value = text;
    showTab("text", false);
    run({ kind: "text", text });
  } else if (drawing) {
    const strokes = decodeStrokes(drawing);
    showTab("draw", false);
    if (!strokes) {
      setStatus("The drawing in this link cannot be read.", true);
      return;
    }
    state.sketch.load(strokes);
    run({ kind: "sketch", strokes });
  } else if (entry && entry.image instanceof Blob) {
    showTab("image", false);
    showPreview(entry.image);
    run({ kind: "image", file: entry.image });
  } else {
    state.sequence++;
    state.query = null;
    $("grid").replaceChildren();
    showDrew(null);
    document.body.classList.remove("busy");
    setStatus("Type a query, draw something or pick an image.");
  }
}

// Strokes in a link: "1" then base64url of, per stroke, its width (1 byte), its point count
// (2 bytes) and its points (x, y: 1 byte each on a 255-step grid over the canvas).
const GRID = 255;
const MAX_POINTS = 8000;

function encodeStrokes(strokes) {
  const bytes = [];
  for (const { width, points } of strokes) {
    bytes.push(Math.max(1, Math.min(255, Math.round(width))), points.length >> 8, points.length & 255);
    for (const [x, y] of points) bytes.push(x, y);
  }
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `1${btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")}`;
}

function decodeStrokes(text) {
  if (!text.startsWith("1")) return null;
  let binary;
  try { binary = atob(text.slice(1).replace(/-/g, "+").replace(/_/g, "/")); } catch (_) { return null; }
  const bytes = Array.from(binary, (char) => char.charCodeAt(0));
  const strokes = [];
  let at = 0;
  let total = 0;
  while (at < bytes.length) {
    if (at + 3 > bytes.length) return null;
    const width = bytes[at];
    const count = (bytes[at + 1] << 8) | bytes[at + 2];
    at += 3;
    total += count;
    if (!width || !count || total > MAX_POINTS || at + 2 * count > bytes.length) return null;
    const points = [];
    for (let i = 0; i < count; i++, at += 2) points.push([bytes[at], bytes[at + 1]]);
    strokes.push({ width, points });
  }
  return strokes.length ? strokes : null;
}

// --- tabs --------------------------------------------------------------------

const TABS = ["text", "draw", "image"];

function showTab(name, focus = true) {
  for (const tab of TABS) {
    const button = $(`tab-${tab}`);
    button.setAttribute("aria-selected", String(tab === name));
    button.tabIndex = tab === name ? 0 : -1;
    $(`pane-${tab}`).hidden = tab !== name;
  }
  if (focus && name === "text") $("text-query").focus();
}

function setUpTabs() {
  for (const [index, tab] of TABS.entries()) {
    const button = $(`tab-${tab}`);
    button.addEventListener("click", () => showTab(tab));
    // Arrow keys move between tabs (the tablist keyboard pattern).
    button.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      const next = TABS[(index + step + TABS.length) % TABS.length];
      showTab(next, false);
      $(`tab-${next}`).focus();
    });
  }
}

// --- drawing -----------------------------------------------------------------

function setPen(width) {
  $("stroke-width").value = String(width);
  $("stroke-value").textContent = String(width);
}

// The canvas keeps its strokes on the link's grid, so a shared link redraws exactly what was searched.
function setUpCanvas() {
  const canvas = $("sketch");
  const context = canvas.getContext("2d");
  const scale = canvas.width / GRID;
  let strokes = [];
  let active = null; // { pointer, stroke }
  let timer = null;

  const toCanvas = ([x, y]) => [x * scale, y * scale];
  const onGrid = (event) => {
    const rect = canvas.getBoundingClientRect();
    const clamp = (v) => Math.max(0, Math.min(GRID, Math.round(v * GRID)));
    return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
  };
  const blank = () => {
    // White first, so the exported PNG is black strokes on white, as the encoder expects.
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, canvas.width, canvas.height);
  };
  const dot = (point, width) => {
    const [x, y] = toCanvas(point);
    context.fillStyle = "#000000";
    context.beginPath();
    context.arc(x, y, width / 2, 0, 2 * Math.PI);
    context.fill();
  };
  const segment = (from, to, width) => {
    context.strokeStyle = "#000000";
    context.lineWidth = width;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...toCanvas(from));
    context.lineTo(...toCanvas(to));
    context.stroke();
  };
  const redraw = () => {
    blank();
    for (const { width, points } of strokes) {
      dot(points[0], width);
      for (let i = 1; i < points.length; i++) segment(points[i - 1], points[i], width);
    }
  };
  const extend = (point) => {
    const points = active.stroke.points;
    const last = points[points.length - 1];
    // Points closer than 2 grid steps add nothing visible, only length to the link.
    if (Math.hypot(point[0] - last[0], point[1] - last[1]) < 2) return false;
    points.push(point);
    segment(last, point, active.stroke.width);
    return true;
  };
  const total = () => strokes.reduce((sum, s) => sum + s.points.length, 0);

  const searchSketch = (how) => {
    clearTimeout(timer);
    if (!strokes.length) {
      setStatus("Draw something first.", true);
      return;
    }
    // Pen lifts of one drawing replace its history entry: the back button skips the half-drawings.
    const mode = how || (state.drawingEntry ? "replace" : "push");
    remember({ kind: "sketch", strokes }, mode);
    state.drawingEntry = true;
    run({ kind: "sketch", strokes: strokes.map((s) => ({ width: s.width, points: [...s.points] })) });
  };
  const autoSearch = () => {
    if (!$("auto-search").checked) return;
    clearTimeout(timer);
    timer = setTimeout(() => searchSketch(), 350);
  };

  canvas.addEventListener("pointerdown", (event) => {
    if (active !== null || total() >= MAX_POINTS) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    const stroke = { width: Number($("stroke-width").value), points: [onGrid(event)] };
    strokes.push(stroke);
    active = { pointer: event.pointerId, stroke };
    dot(stroke.points[0], stroke.width);
    clearTimeout(timer);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!active || event.pointerId !== active.pointer) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) {
      if (total() >= MAX_POINTS) break;
      extend(onGrid(each));
    }
  });
  const end = (event) => {
    if (!active || event.pointerId !== active.pointer) return;
    extend(onGrid(event));
    active = null;
    autoSearch();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  $("clear-canvas").addEventListener("click", () => {
    clearTimeout(timer);
    strokes = [];
    state.drawingEntry = false;
    redraw();
  });
  $("undo-stroke").addEventListener("click", () => {
    if (!strokes.length) return;
    strokes.pop();
    redraw();
    if (strokes.length) autoSearch();
  });
  $("sketch-submit").addEventListener("click", () => searchSketch());
  $("stroke-width").addEventListener("input", (event) => {
    state.penTouched = true;
    $("stroke-value").textContent = event.target.value;
  });
  blank();

  return {
    strokes: () => strokes.map((s) => ({ width: s.width, points: [...s.points] })),
    load(loaded) {
      clearTimeout(timer);
      active = null;
      strokes = loaded.map((s) => ({ width: s.width, points: [...s.points] }));
      redraw();
    },
    blob: () => new Promise((resolve, reject) => {
      canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not export the drawing"))), "image/png");
    }),
  };
}

// --- image upload ---------------------------------------------------------------

function showPreview(file) {
  const preview = $("image-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").textContent = file.name || "image";
}

function setUpUpload() {
  const input = $("image-file");
  const drop = $("drop");
  const use = (file) => {
    if (!file) return;
    showPreview(file);
    search({ kind: "image", file }, "push");
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

// --- start -------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  setUpTabs();
  state.sketch = setUpCanvas();
  setUpUpload();
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text-query").value.trim();
    if (!text) { setStatus("Type something to search for.", true); return; }
    search({ kind: "text", text }, "push");
  });
  $("collection").addEventListener("change", () => {
    selectCollection($("collection").value);
    rerun("push");
  });
  $("k").addEventListener("change", () => rerun("push"));
  const key = $("api-key");
  key.value = localStorage.getItem("clipsearch.apiKey") || "";
  key.addEventListener("change", async () => {
    localStorage.setItem("clipsearch.apiKey", key.value);
    await loadCollections();
    selectCollection(state.collection);
  });
  window.addEventListener("popstate", (event) => applyLocation(event.state));
  await loadCollections();
  applyLocation(history.state);
});
