// activeseg annotator: lease a task, show its region, take a class (or a painted patch),
// submit, pull the next one. Plain ES module, no dependencies; talks to the API with the
// user's token (kept in sessionStorage, i.e. for this tab only).
//
// Review mode (reviewers, engineers, admins: the "Annotate | Review" tabs, key m): lease a
// disputed task (POST /projects/{id}/reviews/next), show each answer's window and their
// consensus over the region, then accept the consensus, reject the answers with a reason,
// or paint a correction with the same tools; the review lease gets the same heartbeat and
// release as a task lease.

import { encodeGreyPng, fromBase64, toBase64, uuid4 } from "./png.js";

const TOKEN_KEY = "activeseg.token";
const DONE_KEY = "activeseg.done";
const HEARTBEAT_MS = 60_000;
const OUTLINE = "#ffe14d";
const REVIEW_ROLES = new Set(["reviewer", "engineer", "admin"]); // who may review (the API's rule)

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
  modes: $("modes"),
  tabAnnotate: $("tab-annotate"),
  tabReview: $("tab-review"),
  workspace: $("workspace"),
  stage: $("stage"),
  canvas: $("canvas"),
  empty: $("empty"),
  emptyTitle: $("empty-title"),
  emptyText: $("empty-text"),
  retry: $("retry"),
  classes: $("classes"),
  answersBox: $("answers-box"),
  answers: $("answers"),
  overlaysBox: $("overlays-box"),
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
  annotateActions: $("annotate-actions"),
  submit: $("submit"),
  skip: $("skip"),
  skipReason: $("skip-reason"),
  reviewActions: $("review-actions"),
  accept: $("accept"),
  correct: $("correct"),
  rejectForm: $("reject-form"),
  rejectReason: $("reject-reason"),
  reject: $("reject"),
  taskInfo: $("task-info"),
  lease: $("lease"),
  queue: $("queue"),
  done: $("done"),
  helpAnnotate: $("help-annotate"),
  helpReview: $("help-review"),
  helpMode: $("help-mode"),
};
const ctx = el.canvas.getContext("2d");

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  user: null,
  view: "annotate", // or "review": what the page leases (tasks, or disputed tasks to decide)
  canReview: false,
  project: null,
  classes: [],
  lease: null, // the /tasks/next (or /reviews/next, kind "review") payload on screen
  clockSkewMs: 0, // server clock minus ours
  task: null, // per-task drawing state, see showTask()
  selected: null,
  mode: "region",
  eraser: false,
  brushSize: 4,
  busy: false,
  hover: null,
  painting: null,
  done: JSON.parse(sessionStorage.getItem(DONE_KEY) || '{"submitted":0,"skipped":0,"reviewed":0}'),
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
  state.canReview = false;
  applyView("annotate");
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
  state.canReview = REVIEW_ROLES.has(me.role);
  el.modes.hidden = !state.canReview; // an annotator never sees the switch
  el.helpMode.hidden = !state.canReview;
  const wantReview = new URLSearchParams(location.search).get("mode") === "review";
  applyView(wantReview && state.canReview ? "review" : "annotate");
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
    await next();
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
      clearTask();
      showEmpty("Nothing to label right now.", EMPTY_TEXT, "Check again");
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

/** Nothing on screen: no lease, no task, no class chosen. */
function clearTask() {
  state.lease = null;
  state.task = null;
  selectClass(null);
  markProposed(null);
  el.answers.replaceChildren();
  el.taskInfo.textContent = "–";
  el.lease.textContent = "–";
  delete el.taskInfo.dataset.taskId;
  updateButtons();
  draw();
}

/** Lease what the current view works on: a task to label, or a disputed task to decide. */
function next() {
  return state.view === "review" ? nextReview() : nextTask();
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
  if (state.view === "review") {
    el.queue.textContent = `${q.disputed ?? 0} disputed`;
    return;
  }
  const parts = ["queued", "leased", "submitted", "skipped", "stale"]
    .filter((k) => k === "queued" || q[k] > 0)
    .map((k) => `${q[k] ?? 0} ${k}`);
  el.queue.textContent = parts.join(" · ");
}

function showDone() {
  const { submitted, skipped } = state.done;
  const reviewed = state.done.reviewed || 0;
  el.done.textContent =
    `${submitted} submitted${skipped ? `, ${skipped} skipped` : ""}` +
    `${reviewed ? `, ${reviewed} reviewed` : ""}`;
  el.done.dataset.submitted = String(submitted);
  el.done.dataset.reviewed = String(reviewed);
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

/** The values of a base64 8-bit index PNG (a mask, an answer window) as w x h bytes. */
async function indexPixels(b64, w, h) {
  const bmp = await bitmapFromBlob(new Blob([fromBase64(b64)], { type: "image/png" }), true);
  const data = pixelsOf(bmp, 0, 0, bmp.width, bmp.height, w, h).data;
  bmp.close();
  const out = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) out[i] = data[i * 4];
  return out;
}

/** What every leased task (to label or to review) draws with: its geometry over the image,
 * the region (`inside`), the dimmed crop, the outline and an empty patch to paint. */
function taskGeometry(lease, image, regionMask) {
  const [by0, bx0, by1, bx1] = lease.bbox;
  const [cy0, cx0, cy1, cx1] = lease.crop;
  const w = bx1 - bx0;
  const h = by1 - by0;
  const imgW = lease.image_width;
  const imgH = lease.image_height;
  const inside = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) inside[i] = regionMask[i] > 0 ? 1 : 0;

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
  const insideRgba = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) insideRgba.data[i * 4 + 3] = inside[i] ? 255 : 0;
  return {
    w, h, bx0, by0, cx0, cy0, cw, ch, imgW, imgH,
    image, inside,
    insideMask: canvasOf(insideRgba),
    dim: canvasOf(dim),
    outline: outlinePath(inside, w, h, bx0, by0),
    patch: new Uint8Array(w * h).fill(255),
    patchImage: new ImageData(w, h),
    patchCanvas: new OffscreenCanvas(w, h),
    patchDarkCanvas: new OffscreenCanvas(w, h),
    patchDark: null,
    expiresAt: parseTime(lease.lease_expires_at),
  };
}

async function showTask(lease) {
  const [image, regionMask, prediction, heat] = await Promise.all([
    loadImage(lease.task.image_id),
    indexPixels(lease.region_mask_png, lease.bbox[3] - lease.bbox[1], lease.bbox[2] - lease.bbox[0]),
    optionalOverlay(lease.prediction_url, "model proposal"),
    optionalOverlay(lease.uncertainty_url, "uncertainty heatmap"),
  ]);
  const base = taskGeometry(lease, image, regionMask);
  const { w, h, bx0, by0, imgW, imgH, inside } = base;

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

  const counts = new Map();
  for (const cls of Object.values(lease.proposed_classes || {})) {
    counts.set(cls, (counts.get(cls) || 0) + 1);
  }
  const proposed = counts.size ? [...counts].sort((a, b) => b[1] - a[1])[0][0] : null;

  state.lease = lease;
  state.task = { ...base, heat, proposal, proposalDark, idempotencyKey: uuid4() };
  renderPatch();

  el.empty.hidden = true;
  showOverlayNote(lease, proposal, heat);
  markProposed(proposed);
  selectClass(state.classes.some((c) => c.id === proposed) ? proposed : null);
  showTaskInfo(lease);
  showQueue(lease.queue);
  updateLease();
  resizeCanvas();
  el.canvas.focus({ preventScroll: true });
}

function showTaskInfo(lease) {
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

/** Class colours of index `values` into the RGBA `image` (255, unlabelled: transparent). */
function colourIndex(values, image) {
  const d = image.data;
  const colours = new Map(state.classes.map((c) => [c.id, colourOf(c.id)]));
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === 255) {
      d[i * 4 + 3] = 0;
      continue;
    }
    const [r, g, b] = colours.get(v) || [128, 128, 128];
    d.set([r, g, b, 255], i * 4);
  }
  return d;
}

function renderPatch() {
  const t = state.task;
  const d = colourIndex(t.patch, t.patchImage);
  t.patchCanvas.getContext("2d").putImageData(t.patchImage, 0, 0);
  t.patchDark = darkMask(d, t.w, t.h, t.patchDarkCanvas);
}

/** The answer on screen as the API takes it: one class for the whole region (`classes`) or
 * the painted patch (`patch_png`); null, with a hint on the status line, when there is none. */
async function answerBody(regionHint) {
  const t = state.task;
  const lease = state.lease;
  if (state.mode === "region") {
    if (state.selected === null) {
      setStatus("Pick a class first (click it, or press its number key).", "warn");
      return null;
    }
    return { classes: Object.fromEntries(lease.task.regions.map((r) => [String(r), state.selected])) };
  }
  if (!t.patch.some((v) => v !== 255)) {
    setStatus(`Paint some of the region first${regionHint}.`, "warn");
    return null;
  }
  return { patch_png: toBase64(await encodeGreyPng(t.patch, t.w, t.h)) };
}

async function submit() {
  const t = state.task;
  const lease = state.lease;
  if (!t || !lease || lease.kind === "review" || state.busy) return;
  const answer = await answerBody(" (or switch to whole region with r)");
  if (!answer) return;
  const body = { ...answer, idempotency_key: t.idempotencyKey };
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
  el.answers.replaceChildren();
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
    await api("POST", leasePath(lease, "release"));
  } catch {
    // The lease will lapse on its own.
  }
}

/** Where a lease is kept alive or given back: a review lease has its own routes. */
function leasePath(lease, action) {
  const review = lease.kind === "review" ? "/review" : "";
  return `/tasks/${lease.task.id}${review}/${action}`;
}

function releaseOnUnload() {
  const lease = state.lease;
  if (!lease || !state.token) return;
  fetch(leasePath(lease, "release"), {
    method: "POST",
    keepalive: true,
    headers: { Authorization: `Bearer ${state.token}` },
  }).catch(() => {});
}

function updateButtons() {
  const has = Boolean(state.lease) && !state.busy;
  el.submit.disabled = !has;
  el.skip.disabled = !has;
  el.accept.disabled = !has;
  el.correct.disabled = !has;
  el.reject.disabled = !has;
  el.retry.disabled = state.busy;
}

// ---------------------------------------------------------------- review mode

const REVIEW_EMPTY_TEXT =
  "Disputed tasks (where the overlapping answers agree too little) appear here; tasks you " +
  "answered yourself go to another reviewer. Check again later.";

/** Show the panel, tabs and help of `view` ("annotate" or "review"); leases nothing. */
function applyView(view) {
  state.view = view;
  const review = view === "review";
  el.tabAnnotate.setAttribute("aria-selected", String(!review));
  el.tabReview.setAttribute("aria-selected", String(review));
  document.body.dataset.view = view;
  el.annotateActions.hidden = review;
  el.reviewActions.hidden = !review;
  el.answersBox.hidden = !review;
  el.overlaysBox.hidden = review; // no model overlays in review; o still toggles the outline
  el.helpAnnotate.hidden = review;
  el.helpReview.hidden = !review;
  el.answers.replaceChildren();
  el.rejectReason.value = "";
  el.queue.textContent = "–";
}

/** Switch between labelling and reviewing: the lease on screen is given back first. */
async function switchView(view) {
  if (view === state.view || (view === "review" && !state.canReview)) return;
  if (state.busy) {
    setStatus("Wait for the request in flight, then switch.", "warn");
    return;
  }
  const lease = state.lease;
  state.lease = null; // nothing acts on it any more, though its release is still on the way
  state.task = null;
  applyView(view);
  const url = new URL(location.href);
  if (view === "review") url.searchParams.set("mode", "review");
  else url.searchParams.delete("mode");
  history.replaceState(null, "", url);
  stopTimers();
  if (lease) {
    try {
      await api("POST", leasePath(lease, "release"));
    } catch {
      // The lease will lapse on its own.
    }
  }
  if (state.project) await next();
}

async function nextReview() {
  if (!state.project || state.busy) return;
  state.busy = true;
  stopTimers();
  try {
    setStatus("Fetching the next disputed task…");
    const lease = await api("POST", `/projects/${state.project.id}/reviews/next`);
    if (lease === null) {
      clearTask();
      showEmpty("No disputed task waits for you.", REVIEW_EMPTY_TEXT, "Check again");
      await refreshQueue();
      setStatus("No disputed task waits for you.", "ok");
      return;
    }
    lease.kind = "review";
    await showReview(lease);
    startTimers();
    setStatus(
      `Task #${lease.task.id}: ${lease.answers.length} answers disagree. Accept the consensus ` +
        "(a), reject them with a reason (r), or paint a correction and press Enter.",
    );
  } catch (err) {
    setStatus(`Could not get a disputed task: ${describe(err)}`, "error");
  } finally {
    state.busy = false;
    updateButtons();
  }
}

function percent(share) {
  return share === null || share === undefined ? "–" : `${Math.round(share * 100)} %`;
}

/** A class-coloured layer of index `values` over the region, for drawing. */
function layerOf(values, t) {
  const img = new ImageData(t.w, t.h);
  const d = colourIndex(values, img);
  for (let i = 0; i < t.w * t.h; i++) if (!t.inside[i]) d[i * 4 + 3] = 0;
  return { canvas: canvasOf(img), dark: darkMask(d, t.w, t.h) };
}

async function showReview(lease) {
  const [, bx0, , bx1] = lease.bbox;
  const w = bx1 - bx0;
  const h = lease.bbox[2] - lease.bbox[0];
  const [image, regionMask, consensus, ...windows] = await Promise.all([
    loadImage(lease.task.image_id),
    indexPixels(lease.region_mask_png, w, h),
    indexPixels(lease.consensus_png, w, h),
    ...lease.answers.map((a) => indexPixels(a.window_png, w, h)),
  ]);
  const base = taskGeometry(lease, image, regionMask);
  const layers = [
    {
      ...layerOf(consensus, base),
      label: "Consensus",
      detail: "per-pixel majority",
      title: "The per-pixel majority of the answers (ties unlabelled): what Accept saves",
    },
    ...lease.answers.map((a, i) => ({
      ...layerOf(windows[i], base),
      label: `Annotator ${a.user_id}`,
      detail: `agrees ${percent(a.agreement)}`,
      title:
        `Answer ${i + 1} by user ${a.user_id}: ${a.answered_pixels} px labelled, ` +
        `${percent(a.agreement)} of them as the consensus`,
      userId: a.user_id,
    })),
  ];
  state.lease = lease;
  state.task = { ...base, heat: null, proposal: null, proposalDark: null, layers, layer: 0 };
  renderPatch();
  el.empty.hidden = true;
  el.rejectReason.value = "";
  markProposed(null);
  selectClass(null);
  buildLayerButtons(layers);
  showLayer(0);
  showTaskInfo(lease);
  el.taskInfo.textContent += ` · agreement ${percent(lease.task.agreement)}`;
  updateLease();
  resizeCanvas();
  el.canvas.focus({ preventScroll: true });
  refreshQueue(); // the review lease carries no counts; not waited for
}

function buildLayerButtons(layers) {
  el.answers.replaceChildren();
  layers.forEach((layer, index) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "layer-btn";
    b.dataset.layer = String(index);
    if (layer.userId !== undefined) b.dataset.userId = String(layer.userId);
    b.title = layer.title;
    b.setAttribute("aria-pressed", "false");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = layer.label;
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = layer.detail;
    b.append(name, detail);
    b.addEventListener("click", () => showLayer(index));
    el.answers.append(b);
  });
}

/** Draw layer `index` (0: the consensus, then each answer) over the region. */
function showLayer(index) {
  const t = state.task;
  if (!t?.layers) return;
  const n = t.layers.length;
  t.layer = ((index % n) + n) % n;
  for (const b of el.answers.children) {
    const on = Number(b.dataset.layer) === t.layer;
    b.setAttribute("aria-pressed", String(on));
    if (on) b.scrollIntoView({ block: "nearest" });
  }
  draw();
}

async function decide(decision, extra = {}) {
  const lease = state.lease;
  if (!lease || lease.kind !== "review" || state.busy) return;
  const id = lease.task.id;
  state.busy = true;
  updateButtons();
  let done;
  try {
    setStatus(`Saving the decision on task #${id}…`);
    const result = await api("POST", `/tasks/${id}/review`, { decision, ...extra });
    state.done.reviewed = (state.done.reviewed || 0) + 1;
    showDone();
    done =
      decision === "reject"
        ? `Rejected task #${id}: it is back in the queue for fresh answers.`
        : `${decision === "accept" ? "Accepted" : "Corrected"} task #${id} ` +
          `(revision ${result.revision.revision}).`;
    state.lease = null;
  } catch (err) {
    setStatus(`Not saved: ${describe(err)}`, "error");
    state.busy = false;
    updateButtons();
    if (err instanceof ApiError && err.status === 409 && /not under your review/.test(err.message)) {
      offerNext();
    }
    return;
  }
  state.busy = false;
  el.rejectReason.value = "";
  await nextReview();
  if (state.lease) setStatus(`${done} Next: task #${state.lease.task.id}.`, "ok");
  else if (!el.empty.hidden) setStatus(`${done} No disputed task waits for you.`, "ok");
}

function accept() {
  return decide("accept");
}

function reject() {
  if (!state.lease || state.busy) return;
  const reason = el.rejectReason.value.trim();
  if (!reason) {
    setStatus("Write why the answers are wrong first: the annotators see it.", "warn");
    el.rejectReason.focus();
    return;
  }
  return decide("reject", { reason });
}

async function correct() {
  if (!state.task || !state.lease || state.busy) return;
  const answer = await answerBody(" with the brush (b), or pick a class for the whole region");
  if (answer) await decide("correct", answer);
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
    el.lease.textContent =
      state.lease.kind === "review"
        ? "expired: decide soon, or the task may go to another reviewer"
        : "expired: submit soon, or the task may go to someone else";
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
    const task = await api("POST", leasePath(lease, "heartbeat"));
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
  const overlay = overlayOf(t);
  if (state.mode === "brush") {
    if (overlay) {
      ctx.globalAlpha = 0.3;
      ctx.drawImage(overlay.canvas, t.bx0, t.by0);
      stripes(overlay.dark, t.bx0, t.by0, 0.35);
    }
    ctx.globalAlpha = 0.7;
    ctx.drawImage(t.patchCanvas, t.bx0, t.by0);
    stripes(t.patchDark, t.bx0, t.by0, 1);
  } else if (overlay) {
    ctx.globalAlpha = 0.5;
    ctx.drawImage(overlay.canvas, t.bx0, t.by0);
    stripes(overlay.dark, t.bx0, t.by0, 1);
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

/** The class-coloured layer over the region: in review, the answer (or the consensus) chosen;
 * else the model's proposal when it is switched on. */
function overlayOf(t) {
  if (t.layers) return t.layers[t.layer] || null;
  return t.proposal && el.showProposal.checked ? { canvas: t.proposal, dark: t.proposalDark } : null;
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
el.retry.addEventListener("click", () => next());
el.tabAnnotate.addEventListener("click", () => switchView("annotate").catch(reportError));
el.tabReview.addEventListener("click", () => switchView("review").catch(reportError));
el.accept.addEventListener("click", () => Promise.resolve(accept()).catch(reportError));
el.correct.addEventListener("click", () => correct().catch(reportError));
el.rejectForm.addEventListener("submit", (e) => {
  e.preventDefault(); // Enter in the reason field sends the rejection
  Promise.resolve(reject()).catch(reportError);
});
el.rejectReason.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  el.rejectReason.blur();
  el.canvas.focus({ preventScroll: true });
});
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
  const common = {
    n: () => !state.lease && next(),
    b: () => setMode("brush"),
    e: toggleEraser,
    f: fillRest,
    "[": () => setBrushSize(state.brushSize - 1),
    "]": () => setBrushSize(state.brushSize + 1),
    ",": () => stepClass(-1),
    ".": () => stepClass(1),
    o: () => toggle(el.showOutline),
    m: () => state.canReview && switchView(state.view === "review" ? "annotate" : "review"),
  };
  const annotating = {
    Enter: () => (state.lease ? submit() : nextTask()),
    s: skip,
    r: () => setMode("region"),
    p: () => toggle(el.showProposal),
    u: () => toggle(el.showHeat),
  };
  const reviewing = {
    Enter: () => (state.lease ? correct() : nextReview()),
    a: accept,
    r: () => state.lease && el.rejectReason.focus(),
    c: () => showLayer(0),
    ArrowRight: () => showLayer((state.task?.layer ?? 0) + 1),
    ArrowLeft: () => showLayer((state.task?.layer ?? 0) - 1),
  };
  if (k.startsWith("Arrow") && target instanceof HTMLInputElement) return; // the size slider
  const action = { ...common, ...(state.view === "review" ? reviewing : annotating) }[k];
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
