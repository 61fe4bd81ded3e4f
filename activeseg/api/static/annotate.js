// activeseg annotator: lease a task, show its region, take a class (or a painted patch),
// submit, pull the next one. Plain ES module, no dependencies; talks to the API with the
// user's token (kept in sessionStorage, i.e. for this tab only).

import { encodeGreyPng, fromBase64, toBase64, uuid4 } from "./png.js";

const TOKEN_KEY = "activeseg.token";
const DONE_KEY = "activeseg.done";
const HEARTBEAT_MS = 60_000;
const OUTLINE = "#ffe14d";

const $ = (id) => document.getElementById(id);
const el = {
  status: $("status"),
  login: $("login"),
  loginForm: $("login-form"),
  loginError: $("login-error"),
  token: $("token"),
  session: $("session"),
  who: $("who"),
  project: $("project"),
  logout: $("logout"),
  workspace: $("workspace"),
  stage: $("stage"),
  canvas: $("canvas"),
  empty: $("empty"),
  emptyTitle: $("empty-title"),
  emptyText: $("empty-text"),
  retry: $("retry"),
  classes: $("classes"),
  modeRegion: $("mode-region"),
  modeBrush: $("mode-brush"),
  brushTools: $("brush-tools"),
  brushSize: $("brush-size"),
  brushSizeOut: $("brush-size-out"),
  eraser: $("eraser"),
  fill: $("fill"),
  clear: $("clear"),
  showProposal: $("show-proposal"),
  showHeat: $("show-heat"),
  showOutline: $("show-outline"),
  overlayNote: $("overlay-note"),
  submit: $("submit"),
  skip: $("skip"),
  skipReason: $("skip-reason"),
  taskInfo: $("task-info"),
  lease: $("lease"),
  queue: $("queue"),
  done: $("done"),
};
const ctx = el.canvas.getContext("2d");

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  user: null,
  project: null,
  classes: [],
  lease: null, // the /tasks/next payload of the task on screen
  clockSkewMs: 0, // server clock minus ours
  task: null, // per-task drawing state, see showTask()
  selected: null,
  mode: "region",
  eraser: false,
  brushSize: 4,
  busy: false,
  hover: null,
  painting: null,
  done: JSON.parse(sessionStorage.getItem(DONE_KEY) || '{"submitted":0,"skipped":0}'),
  images: new Map(), // image id -> ImageBitmap (a few recent ones)
  timers: [],
};

// ---------------------------------------------------------------- status line and errors

function setStatus(text, kind = "") {
  el.status.textContent = text;
  el.status.className = `status ${kind}`.trim();
}

class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `${detail} (HTTP ${status})` : detail);
    this.status = status;
    this.detail = detail;
  }
}

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

window.addEventListener("error", (e) => setStatus(`Unexpected error: ${e.message}`, "error"));
window.addEventListener("unhandledrejection", (e) =>
  setStatus(`Unexpected error: ${describe(e.reason)}`, "error"),
);

async function errorDetail(res) {
  let text = "";
  try {
    text = await res.text();
    const body = JSON.parse(text);
    const { detail } = body;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`)
        .join("; ");
    }
    return JSON.stringify(detail ?? body);
  } catch {
    return text.trim().slice(0, 300) || res.statusText || "request failed";
  }
}

function noteClock(res) {
  const date = Date.parse(res.headers.get("date") || "");
  // The Date header has 1 s steps: the server clock is somewhere in [date, date + 1 s).
  if (!Number.isNaN(date)) state.clockSkewMs = date + 500 - Date.now();
}

/** Call the API with the token. JSON in, JSON (or a Blob for images) out; null on 204. */
const SIGNED = /[?&]sig=/;

async function api(method, path, body, { raw = false } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `cannot reach the server: ${describe(err)}`);
  }
  noteClock(res);
  // A signed link's 401 (expired, or its key revoked) says nothing about the token.
  if (res.status === 401 && !SIGNED.test(path)) {
    const detail = await errorDetail(res);
    toLogin(`Your token was refused: ${detail}`);
    throw new ApiError(401, detail);
  }
  if (!res.ok) throw new ApiError(res.status, await errorDetail(res));
  if (res.status === 204) return null;
  if (raw) return res.blob();
  return res.json();
}

// ---------------------------------------------------------------- login and project

function toLogin(message = "") {
  stopTimers();
  state.user = null;
  state.lease = null;
  sessionStorage.removeItem(TOKEN_KEY);
  el.session.hidden = true;
  el.workspace.hidden = true;
  el.login.hidden = false;
  el.loginError.textContent = message;
  setStatus(message ? "Not logged in." : "Log in with your API token.", message ? "error" : "");
  el.token.focus();
}

async function login(token) {
  state.token = token;
  let me;
  try {
    const res = await fetch("/users/me", { headers: { Authorization: `Bearer ${token}` } });
    if (!res.ok) {
      const detail = await errorDetail(res);
      toLogin(res.status === 401 ? `That token was refused: ${detail}` : `${detail} (HTTP ${res.status})`);
      return;
    }
    me = await res.json();
  } catch (err) {
    toLogin(`Cannot reach the server: ${describe(err)}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.user = me;
  el.login.hidden = true;
  el.loginError.textContent = "";
  el.session.hidden = false;
  el.who.replaceChildren();
  const name = document.createElement("strong");
  name.textContent = me.name;
  el.who.append(name, ` (${me.role})`);
  el.who.dataset.role = me.role;
  await loadProjects();
}

async function loadProjects() {
  setStatus("Loading projects…");
  const page = await api("GET", "/projects?limit=500");
  const projects = page.data;
  el.project.replaceChildren();
  const placeholder = new Option(projects.length ? "choose a project…" : "no projects", "");
  placeholder.disabled = true;
  el.project.append(placeholder);
  for (const p of projects) el.project.append(new Option(`${p.name} (#${p.id})`, String(p.id)));
  const wanted = new URLSearchParams(location.search).get("project");
  if (wanted && !projects.some((p) => String(p.id) === wanted)) {
    el.project.value = "";
    setStatus(`Project ${wanted} does not exist or you are not a member of it.`, "error");
    return;
  }
  const pick = wanted || (projects.length === 1 ? String(projects[0].id) : "");
  if (pick) {
    el.project.value = pick;
    await openProject(Number(pick));
  } else {
    el.project.value = "";
    setStatus(
      projects.length
        ? "Pick a project to start labelling."
        : "You are not a member of any project yet; ask an engineer to add you.",
      projects.length ? "" : "warn",
    );
  }
}

async function openProject(id) {
  // Picking the project already open keeps its task.
  if (state.project?.id === id && (state.lease || state.busy)) return;
  el.project.disabled = true; // one switch at a time
  try {
    await releaseCurrent();
    const url = new URL(location.href);
    url.searchParams.set("project", String(id));
    history.replaceState(null, "", url);
    setStatus("Loading project…");
    state.project = await api("GET", `/projects/${id}`);
    state.classes = [...state.project.classes].sort((a, b) => a.id - b.id);
    document.title = `${state.project.name} · activeseg annotator`;
    buildClassButtons();
    el.workspace.hidden = false;
    resizeCanvas();
    await nextTask();
  } finally {
    el.project.disabled = false;
  }
}

// ---------------------------------------------------------------- classes and tools

// Keys follow the classes as shown (state.classes, in id order): 1-9 and 0 pick the first ten,
// Shift+1-9 and Shift+0 the next ten, "," and "." step to the previous / next class.
// Matched on the physical number row (KeyboardEvent.code), so Shift+1 is Shift+1 and not "!",
// on any keyboard layout.
const CLASS_KEYS = 20;

/** What the class button at `index` (0-based, display order) shows: "1".."0", "⇧1".."⇧0". */
function keyLabel(index) {
  if (index >= CLASS_KEYS) return "";
  const digit = String((index + 1) % 10);
  return index < 10 ? digit : `\u21e7${digit}`;
}

/** The display index a number key picks: 1 -> 0, ..., 9 -> 8, 0 -> 9; Shift adds 10. */
function indexOfKey(digit, shift) {
  return ((digit + 9) % 10) + (shift ? 10 : 0);
}

function digitOf(e) {
  const m = /^(?:Digit|Numpad)([0-9])$/.exec(e.code || "");
  if (m) return Number(m[1]);
  return /^[0-9]$/.test(e.key) ? Number(e.key) : null;
}

function buildClassButtons() {
  el.classes.replaceChildren();
  state.classes.forEach((c, index) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "class-btn";
    b.dataset.classId = String(c.id);
    b.setAttribute("aria-pressed", "false");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.backgroundColor = c.colour;
    // The legend keeps the class colour; a dark one gets the stripes its tint gets on the image.
    sw.classList.toggle("dark", isDark(colourOf(c.id)));
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const label = keyLabel(index);
    const spoken = label.replace("\u21e7", "Shift+");
    b.title = `${c.name} (class ${c.id}${label ? `, key ${spoken}` : ""})`;
    b.append(sw, name);
    if (label) {
      const key = document.createElement("kbd");
      key.className = "key";
      key.textContent = label;
      key.title = spoken;
      b.append(key);
    }
    b.addEventListener("click", () => selectClass(c.id));
    el.classes.append(b);
  });
}

/** Select the class `step` places after (or before) the selected one, wrapping around. */
function stepClass(step) {
  const n = state.classes.length;
  if (!n) return;
  const at = state.classes.findIndex((c) => c.id === state.selected);
  const index = at < 0 ? (step > 0 ? 0 : n - 1) : (((at + step) % n) + n) % n;
  selectClass(state.classes[index].id);
}

function selectClass(id) {
  if (id !== null && !state.classes.some((c) => c.id === id)) return;
  state.selected = id;
  state.eraser = false;
  el.eraser.setAttribute("aria-pressed", "false");
  for (const b of el.classes.children) {
    const on = Number(b.dataset.classId) === id;
    b.setAttribute("aria-pressed", String(on));
    // A long class list scrolls inside its box: keep the chosen one in sight.
    if (on) b.scrollIntoView({ block: "nearest" });
  }
  draw();
}

function markProposed(proposed) {
  for (const b of el.classes.children) {
    b.querySelector(".proposed")?.remove();
    if (Number(b.dataset.classId) === proposed) {
      const tag = document.createElement("span");
      tag.className = "proposed";
      tag.textContent = "model";
      b.querySelector(".name").after(tag);
    }
  }
}

function setMode(mode) {
  state.mode = mode;
  el.modeRegion.setAttribute("aria-pressed", String(mode === "region"));
  el.modeBrush.setAttribute("aria-pressed", String(mode === "brush"));
  el.brushTools.hidden = mode !== "brush";
  el.canvas.classList.toggle("brush", mode === "brush");
  draw();
}

function setBrushSize(size) {
  state.brushSize = Math.max(1, Math.min(Number(el.brushSize.max), Math.round(size)));
  el.brushSize.value = String(state.brushSize);
  el.brushSizeOut.textContent = String(state.brushSize);
  draw();
}

function colourOf(id) {
  const c = state.classes.find((k) => k.id === id);
  const hex = (c?.colour || "#808080").replace("#", "");
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// A class drawn in a dark colour (black background, navy, ...) would vanish on a dark image
// at any opacity: its tint gets light diagonal stripes on top, drawn in screen pixels so they
// stay thin at any zoom. Below this relative luminance a colour counts as dark (#404040 is 0.05,
// the lightest grey that still gets stripes; tab10 blue #1f77b4 is 0.18 and does not).
const DARK_LUMINANCE = 0.06;
const STRIPE = "rgba(255, 255, 255, 0.85)";

/** WCAG relative luminance of an sRGB colour [r, g, b] in 0-255: 0 (black) to 1 (white). */
function luminance(rgb) {
  const [r, g, b] = rgb.map((v) => {
    const c = v / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function isDark(rgb) {
  return luminance(rgb) < DARK_LUMINANCE;
}

/** Where an RGBA layer is drawn in a dark colour: a canvas opaque there, or null if nowhere. */
function darkMask(data, w, h, out = null) {
  const mask = new ImageData(w, h);
  let any = false;
  for (let i = 0; i < w * h; i++) {
    const o = i * 4;
    if (data[o + 3] > 0 && isDark([data[o], data[o + 1], data[o + 2]])) {
      mask.data[o + 3] = 255;
      any = true;
    }
  }
  if (!any) return null;
  const c = out || new OffscreenCanvas(w, h);
  c.getContext("2d").putImageData(mask, 0, 0);
  return c;
}

// ---------------------------------------------------------------- tasks

function resetPatch() {
  const t = state.task;
  if (!t) return;
  t.patch.fill(255);
  renderPatch();
}

async function nextTask() {
  if (!state.project || state.busy) return;
  state.busy = true;
  stopTimers();
  try {
    setStatus("Fetching the next task…");
    const lease = await api("POST", `/projects/${state.project.id}/tasks/next`);
    if (lease === null) {
      state.lease = null;
      state.task = null;
      showEmpty("Nothing to label right now.", EMPTY_TEXT, "Check again");
      selectClass(null);
      markProposed(null);
      el.taskInfo.textContent = "–";
      el.lease.textContent = "–";
      delete el.taskInfo.dataset.taskId;
      updateButtons();
      draw();
      await refreshQueue();
      setStatus("Nothing to label right now: the queue is empty.", "ok");
      return;
    }
    await showTask(lease);
    startTimers();
    const t = lease.task;
    setStatus(`Task #${t.id}: label the outlined region.`);
  } catch (err) {
    setStatus(`Could not get a task: ${describe(err)}`, "error");
  } finally {
    state.busy = false;
    updateButtons();
  }
}

async function refreshQueue() {
  try {
    showQueue(await api("GET", `/projects/${state.project.id}/queue`));
  } catch (err) {
    setStatus(`Could not read the queue: ${describe(err)}`, "error");
  }
}

function showQueue(q) {
  if (!q) return;
  const parts = ["queued", "leased", "submitted", "skipped", "stale"]
    .filter((k) => k === "queued" || q[k] > 0)
    .map((k) => `${q[k] ?? 0} ${k}`);
  el.queue.textContent = parts.join(" · ");
}

function showDone() {
  const { submitted, skipped } = state.done;
  el.done.textContent = `${submitted} submitted${skipped ? `, ${skipped} skipped` : ""}`;
  el.done.dataset.submitted = String(submitted);
  sessionStorage.setItem(DONE_KEY, JSON.stringify(state.done));
}

async function bitmapFromBlob(blob, exact = false) {
  const opts = exact ? { colorSpaceConversion: "none", premultiplyAlpha: "none" } : {};
  return createImageBitmap(blob, opts);
}

async function loadImage(imageId) {
  if (state.images.has(imageId)) return state.images.get(imageId);
  // Always the server's 8-bit PNG: upright (EXIF applied) and with the contrast the model
  // sees. The stored file may be a TIFF, 16-bit or float, which browsers show wrongly or not.
  const bmp = await bitmapFromBlob(
    await api("GET", `/annotate/images/${imageId}.png`, undefined, { raw: true }),
  );
  state.images.set(imageId, bmp);
  while (state.images.size > 6) {
    const oldest = state.images.keys().next().value;
    state.images.get(oldest).close?.();
    state.images.delete(oldest);
  }
  return bmp;
}

async function optionalOverlay(url, what) {
  if (!url) return null;
  try {
    return await bitmapFromBlob(await api("GET", url, undefined, { raw: true }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401 && !SIGNED.test(url)) throw err;
    setStatus(`The ${what} is not available: ${describe(err)}`, "warn");
    return null;
  }
}

function pixelsOf(bmp, sx, sy, sw, sh, w, h) {
  const c = new OffscreenCanvas(w, h);
  const g = c.getContext("2d", { willReadFrequently: true });
  g.imageSmoothingEnabled = false;
  g.drawImage(bmp, sx, sy, sw, sh, 0, 0, w, h);
  return g.getImageData(0, 0, w, h);
}

function canvasOf(imageData) {
  const c = new OffscreenCanvas(imageData.width, imageData.height);
  c.getContext("2d").putImageData(imageData, 0, 0);
  return c;
}

/** Region outline in image coordinates: the edges between inside and outside pixels. */
function outlinePath(inside, w, h, x0, y0) {
  const path = new Path2D();
  const at = (x, y) => x >= 0 && y >= 0 && x < w && y < h && inside[y * w + x] === 1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!at(x, y)) continue;
      const X = x0 + x;
      const Y = y0 + y;
      if (!at(x, y - 1)) { path.moveTo(X, Y); path.lineTo(X + 1, Y); }
      if (!at(x, y + 1)) { path.moveTo(X, Y + 1); path.lineTo(X + 1, Y + 1); }
      if (!at(x - 1, y)) { path.moveTo(X, Y); path.lineTo(X, Y + 1); }
      if (!at(x + 1, y)) { path.moveTo(X + 1, Y); path.lineTo(X + 1, Y + 1); }
    }
  }
  return path;
}

async function showTask(lease) {
  const [by0, bx0, by1, bx1] = lease.bbox;
  const [cy0, cx0, cy1, cx1] = lease.crop;
  const w = bx1 - bx0;
  const h = by1 - by0;
  const imgW = lease.image_width;
  const imgH = lease.image_height;

  const [image, maskBmp, prediction, heat] = await Promise.all([
    loadImage(lease.task.image_id),
    bitmapFromBlob(new Blob([fromBase64(lease.region_mask_png)], { type: "image/png" }), true),
    optionalOverlay(lease.prediction_url, "model proposal"),
    optionalOverlay(lease.uncertainty_url, "uncertainty heatmap"),
  ]);
  const maskData = pixelsOf(maskBmp, 0, 0, maskBmp.width, maskBmp.height, w, h).data;
  maskBmp.close();
  const inside = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) inside[i] = maskData[i * 4] > 0 ? 1 : 0;

  // Dim everything in the crop but the region.
  const cw = cx1 - cx0;
  const ch = cy1 - cy0;
  const dim = new ImageData(cw, ch);
  for (let y = 0; y < ch; y++) {
    for (let x = 0; x < cw; x++) {
      const bx = cx0 + x - bx0;
      const by = cy0 + y - by0;
      const isIn = bx >= 0 && by >= 0 && bx < w && by < h && inside[by * w + bx] === 1;
      dim.data[(y * cw + x) * 4 + 3] = isIn ? 0 : 120;
    }
  }

  // The model's proposal (class colours), masked to the region.
  let proposal = null;
  let proposalDark = null;
  if (prediction) {
    const fx = prediction.width / imgW;
    const fy = prediction.height / imgH;
    const px = pixelsOf(prediction, bx0 * fx, by0 * fy, w * fx, h * fy, w, h);
    for (let i = 0; i < w * h; i++) if (!inside[i]) px.data[i * 4 + 3] = 0;
    proposal = canvasOf(px);
    proposalDark = darkMask(px.data, w, h);
    prediction.close();
  }
  const insideRgba = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) insideRgba.data[i * 4 + 3] = inside[i] ? 255 : 0;

  const counts = new Map();
  for (const cls of Object.values(lease.proposed_classes || {})) {
    counts.set(cls, (counts.get(cls) || 0) + 1);
  }
  const proposed = counts.size ? [...counts].sort((a, b) => b[1] - a[1])[0][0] : null;

  state.lease = lease;
  state.task = {
    w, h, bx0, by0, cx0, cy0, cw, ch, imgW, imgH,
    image, heat, proposal, proposalDark, inside,
    insideMask: canvasOf(insideRgba),
    dim: canvasOf(dim),
    outline: outlinePath(inside, w, h, bx0, by0),
    patch: new Uint8Array(w * h).fill(255),
    patchImage: new ImageData(w, h),
    patchCanvas: new OffscreenCanvas(w, h),
    patchDarkCanvas: new OffscreenCanvas(w, h),
    patchDark: null,
    idempotencyKey: uuid4(),
    expiresAt: parseTime(lease.lease_expires_at),
  };
  renderPatch();

  el.empty.hidden = true;
  showOverlayNote(lease, proposal, heat);
  markProposed(proposed);
  selectClass(state.classes.some((c) => c.id === proposed) ? proposed : null);

  const t = lease.task;
  const nRegions = t.regions.length;
  el.taskInfo.textContent =
    `#${t.id} · image ${t.image_id} · ${nRegions === 1 ? "region" : "regions"} ` +
    t.regions.join(", ");
  el.taskInfo.title = `priority ${Number(t.priority).toFixed(3)} (${t.measure})`;
  Object.assign(el.taskInfo.dataset, {
    taskId: String(t.id),
    imageId: String(t.image_id),
    regions: JSON.stringify(t.regions),
    bbox: JSON.stringify(lease.bbox),
  });
  showQueue(lease.queue);
  updateLease();
  resizeCanvas();
  el.canvas.focus({ preventScroll: true });
}

function showOverlayNote(lease, proposal, heat) {
  el.showProposal.disabled = !proposal;
  el.showHeat.disabled = !heat;
  let note = "";
  if (!lease.prediction_url && !lease.uncertainty_url) {
    note = "No model yet, so no proposal or heatmap.";
  } else if (!proposal || !heat) {
    note = "Some overlays could not be loaded (see the status line).";
  }
  el.overlayNote.textContent = note;
  el.overlayNote.hidden = !note;
}

function parseTime(text) {
  // The API writes UTC; a timestamp without a zone is read as UTC too, never as local time.
  const hasZone = /(Z|[+-]\d\d:?\d\d)$/.test(text);
  return Date.parse(hasZone ? text : `${text}Z`);
}

function renderPatch() {
  const t = state.task;
  const d = t.patchImage.data;
  const colours = new Map(state.classes.map((c) => [c.id, colourOf(c.id)]));
  for (let i = 0; i < t.patch.length; i++) {
    const v = t.patch[i];
    if (v === 255) {
      d[i * 4 + 3] = 0;
      continue;
    }
    const [r, g, b] = colours.get(v) || [128, 128, 128];
    d.set([r, g, b, 255], i * 4);
  }
  t.patchCanvas.getContext("2d").putImageData(t.patchImage, 0, 0);
  t.patchDark = darkMask(d, t.w, t.h, t.patchDarkCanvas);
}

async function submit() {
  const t = state.task;
  const lease = state.lease;
  if (!t || !lease || state.busy) return;
  let body;
  if (state.mode === "region") {
    if (state.selected === null) {
      setStatus("Pick a class first (click it, or press its number key).", "warn");
      return;
    }
    const classes = Object.fromEntries(lease.task.regions.map((r) => [String(r), state.selected]));
    body = { classes, idempotency_key: t.idempotencyKey };
  } else {
    if (!t.patch.some((v) => v !== 255)) {
      setStatus("Paint some of the region first (or switch to whole region with r).", "warn");
      return;
    }
    const png = await encodeGreyPng(t.patch, t.w, t.h);
    body = { patch_png: toBase64(png), idempotency_key: t.idempotencyKey };
  }
  state.busy = true;
  updateButtons();
  try {
    setStatus(`Saving task #${lease.task.id}…`);
    const result = await api("POST", `/tasks/${lease.task.id}/submit`, body);
    state.done.submitted += 1;
    showDone();
    const saved = result.revision
      ? `revision ${result.revision.revision}`
      : `answer ${result.task.answers} of the overlap`;
    setStatus(`Saved task #${lease.task.id} (${saved}).`, "ok");
    state.lease = null;
  } catch (err) {
    setStatus(`Not saved: ${describe(err)}`, "error");
    state.busy = false;
    updateButtons();
    // 409: the task is no longer yours; 422 naming the Idempotency-Key: an earlier attempt of
    // this answer was stored (its response was lost) and the paint changed since.
    const stored = err instanceof ApiError && err.status === 422 && /Idempotency-Key/.test(err.message);
    if ((err instanceof ApiError && err.status === 409) || stored) offerNext();
    return;
  }
  state.busy = false;
  await nextTask();
}

async function skip() {
  const lease = state.lease;
  if (!lease || state.busy) return;
  const reason = el.skipReason.value;
  state.busy = true;
  updateButtons();
  try {
    await api("POST", `/tasks/${lease.task.id}/skip`, { reason });
    state.done.skipped += 1;
    showDone();
    el.skipReason.value = "unclear"; // a reason is chosen per task, never carried over
    state.lease = null;
  } catch (err) {
    setStatus(`Could not skip: ${describe(err)}`, "error");
    state.busy = false;
    updateButtons();
    if (err instanceof ApiError && err.status === 409) offerNext();
    return;
  }
  state.busy = false;
  await nextTask();
  if (state.lease) setStatus(`Skipped task #${lease.task.id} (${reason}). Next one loaded.`);
}

function offerNext() {
  // The task is no longer ours (lease taken over, or already answered): move on.
  stopTimers();
  state.lease = null;
  state.task = null;
  el.lease.textContent = "lost";
  showEmpty("This task is no longer yours.", "See the message above. Pull another one.", "Next task");
  updateButtons();
  draw();
}

const EMPTY_TEXT =
  "The queue of this project is empty. Check again later, or ask an engineer to start a new round.";

function showEmpty(title, text, button) {
  el.emptyTitle.textContent = title;
  el.emptyText.textContent = text;
  el.retry.textContent = button;
  el.empty.hidden = false;
}

async function releaseCurrent() {
  const lease = state.lease;
  stopTimers();
  state.lease = null;
  state.task = null;
  if (!lease) return;
  try {
    await api("POST", `/tasks/${lease.task.id}/release`);
  } catch {
    // The lease will lapse on its own.
  }
}

function releaseOnUnload() {
  const lease = state.lease;
  if (!lease || !state.token) return;
  fetch(`/tasks/${lease.task.id}/release`, {
    method: "POST",
    keepalive: true,
    headers: { Authorization: `Bearer ${state.token}` },
  }).catch(() => {});
}

function updateButtons() {
  const has = Boolean(state.lease) && !state.busy;
  el.submit.disabled = !has;
  el.skip.disabled = !has;
  el.retry.disabled = state.busy;
}

// ---------------------------------------------------------------- lease timer, heartbeat

function stopTimers() {
  for (const id of state.timers) clearInterval(id);
  state.timers = [];
}

function startTimers() {
  stopTimers();
  state.timers.push(setInterval(updateLease, 1000));
  state.timers.push(setInterval(heartbeat, HEARTBEAT_MS));
}

function updateLease() {
  const t = state.task;
  if (!t || !state.lease) return;
  const left = Math.floor((t.expiresAt - (Date.now() + state.clockSkewMs)) / 1000);
  if (left <= 0) {
    el.lease.textContent = "expired: submit soon, or the task may go to someone else";
    el.lease.className = "lease-over";
    return;
  }
  const m = Math.floor(left / 60);
  const s = String(left % 60).padStart(2, "0");
  el.lease.textContent = `${m}:${s} left`;
  el.lease.className = left < 60 ? "lease-low" : "";
}

async function heartbeat() {
  const lease = state.lease;
  if (!lease || state.busy) return;
  try {
    const task = await api("POST", `/tasks/${lease.task.id}/heartbeat`);
    if (state.lease === lease && task.lease_expires_at) {
      state.task.expiresAt = parseTime(task.lease_expires_at);
      updateLease();
    }
  } catch (err) {
    setStatus(`Lease not extended: ${describe(err)}`, "error");
    if (err instanceof ApiError && err.status === 409) offerNext();
  }
}

// ---------------------------------------------------------------- drawing

const view = { scale: 1, ox: 0, oy: 0, dpr: 1 };
const stripeLayer = { canvas: null, pattern: null, dpr: 0 }; // reused by stripes()

function resizeCanvas() {
  const dpr = window.devicePixelRatio || 1;
  const r = el.stage.getBoundingClientRect();
  el.canvas.width = Math.max(1, Math.round(r.width * dpr));
  el.canvas.height = Math.max(1, Math.round(r.height * dpr));
  view.dpr = dpr;
  draw();
}

function draw() {
  const W = el.canvas.width;
  const H = el.canvas.height;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.globalAlpha = 1;
  ctx.fillStyle = "#0e0f12";
  ctx.fillRect(0, 0, W, H);
  const t = state.task;
  if (!t || !state.lease) return;
  const pad = 16 * view.dpr;
  const scale = Math.min((W - 2 * pad) / t.cw, (H - 2 * pad) / t.ch);
  view.scale = scale;
  view.ox = (W - t.cw * scale) / 2 - t.cx0 * scale;
  view.oy = (H - t.ch * scale) / 2 - t.cy0 * scale;
  el.canvas.dataset.view = JSON.stringify(view);

  ctx.imageSmoothingEnabled = false;
  ctx.setTransform(scale, 0, 0, scale, view.ox, view.oy);
  const { cx0, cy0, cw, ch } = t;
  const fx = t.image.width / t.imgW;
  const fy = t.image.height / t.imgH;
  ctx.drawImage(t.image, cx0 * fx, cy0 * fy, cw * fx, ch * fy, cx0, cy0, cw, ch);
  if (t.heat && el.showHeat.checked) {
    const hx = t.heat.width / t.imgW;
    const hy = t.heat.height / t.imgH;
    ctx.globalAlpha = 0.6;
    ctx.drawImage(t.heat, cx0 * hx, cy0 * hy, cw * hx, ch * hy, cx0, cy0, cw, ch);
    ctx.globalAlpha = 1;
  }
  ctx.drawImage(t.dim, cx0, cy0);
  const showProposal = t.proposal && el.showProposal.checked;
  if (state.mode === "brush") {
    if (showProposal) {
      ctx.globalAlpha = 0.3;
      ctx.drawImage(t.proposal, t.bx0, t.by0);
      stripes(t.proposalDark, t.bx0, t.by0, 0.35);
    }
    ctx.globalAlpha = 0.7;
    ctx.drawImage(t.patchCanvas, t.bx0, t.by0);
    stripes(t.patchDark, t.bx0, t.by0, 1);
  } else if (showProposal) {
    ctx.globalAlpha = 0.5;
    ctx.drawImage(t.proposal, t.bx0, t.by0);
    stripes(t.proposalDark, t.bx0, t.by0, 1);
  } else if (state.selected !== null) {
    // No proposal on screen: tint the region with the chosen class.
    const rgb = colourOf(state.selected);
    ctx.globalAlpha = 0.3;
    ctx.fillStyle = `rgb(${rgb.join(",")})`;
    ctx.fill(regionFill(t));
    if (isDark(rgb)) stripes(t.insideMask, t.bx0, t.by0, 1);
  }
  ctx.globalAlpha = 1;
  if (el.showOutline.checked) {
    ctx.lineCap = "square";
    ctx.strokeStyle = "rgba(0,0,0,0.85)";
    ctx.lineWidth = (4 * view.dpr) / scale;
    ctx.stroke(t.outline);
    ctx.strokeStyle = OUTLINE;
    ctx.lineWidth = (2 * view.dpr) / scale;
    ctx.stroke(t.outline);
  }
  if (state.mode === "brush" && state.hover) {
    ctx.beginPath();
    ctx.arc(state.hover.x, state.hover.y, brushRadius(), 0, 2 * Math.PI);
    const rgb = state.eraser ? [255, 255, 255] : colourOf(state.selected);
    // A halo of the opposite brightness keeps the cursor visible on any image.
    ctx.lineWidth = (3.5 * view.dpr) / scale;
    ctx.strokeStyle = isDark(rgb) ? STRIPE : "rgba(0, 0, 0, 0.6)";
    ctx.stroke();
    ctx.lineWidth = (1.5 * view.dpr) / scale;
    ctx.strokeStyle = `rgb(${rgb.join(",")})`;
    ctx.stroke();
  }
}

/** Light diagonal "/" stripes, `view.dpr`-scaled, as a pattern for `g`. */
function stripePattern(g) {
  if (stripeLayer.dpr !== view.dpr || !stripeLayer.pattern) {
    const n = Math.max(4, Math.round(7 * view.dpr));
    const tile = new OffscreenCanvas(n, n);
    const t = tile.getContext("2d");
    t.strokeStyle = STRIPE;
    t.lineWidth = 1.5 * view.dpr;
    t.beginPath();
    // One line across the tile and the two cut-off corners, so that the tiles join up.
    for (const d of [-n, 0, n]) {
      t.moveTo(d, n);
      t.lineTo(d + n, 0);
    }
    t.stroke();
    stripeLayer.pattern = g.createPattern(tile, "repeat");
    stripeLayer.dpr = view.dpr;
  }
  return stripeLayer.pattern;
}

/** Stripe the pixels where `mask` (image coordinates, drawn at x, y) is opaque. */
function stripes(mask, x, y, alpha) {
  if (!mask) return;
  const W = el.canvas.width;
  const H = el.canvas.height;
  if (stripeLayer.canvas?.width !== W || stripeLayer.canvas?.height !== H) {
    stripeLayer.canvas = new OffscreenCanvas(W, H);
    stripeLayer.pattern = null;
  }
  const g = stripeLayer.canvas.getContext("2d");
  g.globalCompositeOperation = "source-over";
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, W, H);
  g.imageSmoothingEnabled = false;
  g.setTransform(view.scale, 0, 0, view.scale, view.ox, view.oy);
  g.drawImage(mask, x, y);
  // Keep the stripes only where the mask is: the pattern in screen pixels, not image pixels.
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.globalCompositeOperation = "source-in";
  g.fillStyle = stripePattern(g);
  g.fillRect(0, 0, W, H);
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.globalAlpha = alpha;
  ctx.drawImage(stripeLayer.canvas, 0, 0);
  ctx.restore();
}

function regionFill(t) {
  if (!t.fill) {
    const path = new Path2D();
    for (let y = 0; y < t.h; y++) {
      for (let x = 0; x < t.w; x++) if (t.inside[y * t.w + x]) path.rect(t.bx0 + x, t.by0 + y, 1, 1);
    }
    t.fill = path;
  }
  return t.fill;
}

// ---------------------------------------------------------------- brush

function brushRadius() {
  return Math.max(state.brushSize / 2, 0.71);
}

function toImage(e) {
  const r = el.canvas.getBoundingClientRect();
  const x = ((e.clientX - r.left) * view.dpr - view.ox) / view.scale;
  const y = ((e.clientY - r.top) * view.dpr - view.oy) / view.scale;
  return { x, y };
}

function paintDisc(x, y) {
  const t = state.task;
  const r = brushRadius();
  const value = state.eraser ? 255 : state.selected;
  const lx = x - t.bx0;
  const ly = y - t.by0;
  let changed = false;
  for (let py = Math.max(0, Math.floor(ly - r)); py <= Math.min(t.h - 1, Math.floor(ly + r)); py++) {
    for (let px = Math.max(0, Math.floor(lx - r)); px <= Math.min(t.w - 1, Math.floor(lx + r)); px++) {
      const dx = px + 0.5 - lx;
      const dy = py + 0.5 - ly;
      const i = py * t.w + px;
      if (dx * dx + dy * dy <= r * r && t.inside[i] === 1 && t.patch[i] !== value) {
        t.patch[i] = value;
        changed = true;
      }
    }
  }
  return changed;
}

function paintTo(p) {
  const from = state.painting;
  const dist = Math.hypot(p.x - from.x, p.y - from.y);
  const steps = Math.max(1, Math.ceil(dist / Math.max(0.5, brushRadius() / 2)));
  let changed = false;
  for (let s = 1; s <= steps; s++) {
    changed =
      paintDisc(from.x + ((p.x - from.x) * s) / steps, from.y + ((p.y - from.y) * s) / steps) ||
      changed;
  }
  state.painting = p;
  if (changed) renderPatch();
}

el.canvas.addEventListener("pointerdown", (e) => {
  if (state.mode !== "brush" || !state.task || !state.lease || e.button !== 0) return;
  if (state.selected === null && !state.eraser) {
    setStatus("Pick a class to paint with first.", "warn");
    return;
  }
  el.canvas.setPointerCapture(e.pointerId);
  const p = toImage(e);
  state.painting = p;
  if (paintDisc(p.x, p.y)) renderPatch();
  draw();
});
el.canvas.addEventListener("pointermove", (e) => {
  if (state.mode !== "brush" || !state.task) return;
  const p = toImage(e);
  state.hover = p;
  if (state.painting) paintTo(p);
  draw();
});
const endStroke = () => {
  state.painting = null;
};
el.canvas.addEventListener("pointerup", endStroke);
el.canvas.addEventListener("pointercancel", endStroke);
el.canvas.addEventListener("pointerleave", () => {
  state.hover = null;
  draw();
});

function fillRest() {
  const t = state.task;
  if (!t || state.selected === null) return;
  for (let i = 0; i < t.patch.length; i++) {
    if (t.inside[i] === 1 && t.patch[i] === 255) t.patch[i] = state.selected;
  }
  renderPatch();
  draw();
}

// ---------------------------------------------------------------- wiring

el.loginForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const token = el.token.value.trim();
  if (!token) return;
  el.token.value = "";
  setStatus("Checking the token…");
  login(token);
});
el.logout.addEventListener("click", async () => {
  await releaseCurrent();
  state.done = { submitted: 0, skipped: 0 };
  showDone();
  toLogin();
});
el.project.addEventListener("change", () => {
  if (el.project.value) openProject(Number(el.project.value)).catch(reportError);
});
el.retry.addEventListener("click", () => nextTask());
el.modeRegion.addEventListener("click", () => setMode("region"));
el.modeBrush.addEventListener("click", () => setMode("brush"));
el.brushSize.addEventListener("input", () => setBrushSize(Number(el.brushSize.value)));
el.eraser.addEventListener("click", () => toggleEraser());
el.fill.addEventListener("click", fillRest);
el.clear.addEventListener("click", () => {
  resetPatch();
  draw();
});
for (const box of [el.showProposal, el.showHeat, el.showOutline]) box.addEventListener("change", draw);
el.submit.addEventListener("click", () => submit().catch(reportError));
el.skip.addEventListener("click", () => skip().catch(reportError));
window.addEventListener("pagehide", releaseOnUnload);
new ResizeObserver(resizeCanvas).observe(el.stage);

function reportError(err) {
  setStatus(describe(err), "error");
}

function toggleEraser() {
  state.eraser = !state.eraser;
  el.eraser.setAttribute("aria-pressed", String(state.eraser));
  if (state.eraser && state.mode !== "brush") setMode("brush");
  draw();
}

function toggle(box) {
  if (box.disabled) return;
  box.checked = !box.checked;
  draw();
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || el.workspace.hidden) return;
  const target = e.target;
  if (target instanceof Element && target.matches("input[type=text], input[type=password], textarea, select")) {
    return;
  }
  const digit = digitOf(e);
  if (digit !== null) {
    const index = indexOfKey(digit, e.shiftKey);
    if (index < state.classes.length) selectClass(state.classes[index].id);
    e.preventDefault();
    return;
  }
  const k = e.key;
  const actions = {
    Enter: () => (state.lease ? submit() : nextTask()),
    s: skip,
    n: () => !state.lease && nextTask(),
    b: () => setMode("brush"),
    r: () => setMode("region"),
    e: toggleEraser,
    f: fillRest,
    "[": () => setBrushSize(state.brushSize - 1),
    "]": () => setBrushSize(state.brushSize + 1),
    ",": () => stepClass(-1),
    ".": () => stepClass(1),
    p: () => toggle(el.showProposal),
    u: () => toggle(el.showHeat),
    o: () => toggle(el.showOutline),
  };
  const action = actions[k];
  if (!action) return;
  e.preventDefault(); // Enter on a focused button submits; it does not also press the button
  Promise.resolve(action()).catch(reportError);
});

// ---------------------------------------------------------------- start

showDone();
setBrushSize(state.brushSize);
setMode("region");
if (state.token) {
  setStatus("Checking the token…");
  login(state.token).catch(reportError);
} else {
  toLogin();
}
