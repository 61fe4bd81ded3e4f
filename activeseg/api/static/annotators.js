// activeseg annotator statistics: log in with an API token (the annotator page's: the same
// sessionStorage entry, this tab only; nothing else is stored), pick a project, read
// GET /projects/{id}/annotators into a table sortable by any column. Plain ES module.

const TOKEN_KEY = "activeseg.token"; // annotate.js keeps the token under the same key

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
  report: $("report"),
  period: $("period"),
  since: $("since"),
  until: $("until"),
  table: $("stats"),
  rows: $("rows"),
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  rows: [],
  sortKey: "name",
  sortDir: 1, // 1 ascending, -1 descending
};

function setStatus(text, kind = "") {
  el.status.textContent = text;
  el.status.className = `status ${kind}`.trim();
}

async function errorDetail(res) {
  try {
    const { detail } = await res.json();
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).at(-1)}: ${d.msg}`).join("; ");
  } catch {
    // not JSON: fall through
  }
  return res.statusText || "request failed";
}

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (res.status === 401) {
    const detail = await errorDetail(res);
    toLogin(`Your token was refused: ${detail}`);
    throw new Error(detail);
  }
  if (!res.ok) throw new Error(`${await errorDetail(res)} (HTTP ${res.status})`);
  return res.json();
}

function toLogin(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  el.session.hidden = true;
  el.report.hidden = true;
  el.login.hidden = false;
  el.loginError.textContent = message;
  setStatus(message ? "Not logged in." : "Log in with your API token.", message ? "error" : "");
  el.token.focus();
}

async function login(token) {
  state.token = token;
  const res = await fetch("/users/me", { headers: { Authorization: `Bearer ${token}` } });
  if (!res.ok) {
    const detail = await errorDetail(res);
    toLogin(res.status === 401 ? `That token was refused: ${detail}` : `${detail} (HTTP ${res.status})`);
    return;
  }
  const me = await res.json();
  sessionStorage.setItem(TOKEN_KEY, token);
  el.login.hidden = true;
  el.loginError.textContent = "";
  el.session.hidden = false;
  const name = document.createElement("strong");
  name.textContent = me.name;
  el.who.replaceChildren(name, ` (${me.role})`);
  await loadProjects();
}

async function loadProjects() {
  setStatus("Loading projects…");
  const { data: projects } = await api("/projects?limit=500");
  el.project.replaceChildren();
  const placeholder = new Option(projects.length ? "choose a project…" : "no projects", "");
  placeholder.disabled = true;
  el.project.append(placeholder);
  for (const p of projects) el.project.append(new Option(`${p.name} (#${p.id})`, String(p.id)));
  const wanted = new URLSearchParams(location.search).get("project");
  const pick = wanted || (projects.length === 1 ? String(projects[0].id) : "");
  if (pick && projects.some((p) => String(p.id) === pick)) {
    el.project.value = pick;
    await loadStats();
  } else {
    el.project.value = "";
    setStatus(wanted ? `Project ${wanted} does not exist or you are not a member of it.` : "Pick a project.",
      wanted ? "error" : "");
  }
}

function isoOrNull(localValue) {
  return localValue ? new Date(localValue).toISOString() : null; // datetime-local is local time
}

async function loadStats() {
  const id = el.project.value;
  if (!id) return;
  const url = new URL(location.href);
  url.searchParams.set("project", id);
  history.replaceState(null, "", url);
  const query = new URLSearchParams();
  for (const [key, input] of [["since", el.since], ["until", el.until]]) {
    const iso = isoOrNull(input.value);
    if (iso) query.set(key, iso);
  }
  setStatus("Loading statistics…");
  const page = await api(`/projects/${id}/annotators?${query}`);
  state.rows = page.data;
  el.report.hidden = false;
  render();
  const n = page.count;
  setStatus(`${n} ${n === 1 ? "annotator" : "annotators"}.`, "ok");
}

const FORMAT = {
  percent: (v) => `${(v * 100).toFixed(1)} %`,
  seconds: (v) => v.toFixed(1),
  rate: (v) => (v >= 100 ? Math.round(v).toLocaleString() : v.toFixed(1)),
  time: (v) => new Date(v).toLocaleString(),
};

function columns() {
  return [...el.table.querySelectorAll("thead th")].map((th) => ({
    th,
    key: th.dataset.key,
    text: th.dataset.kind === "text",
    fmt: FORMAT[th.dataset.fmt] || String,
  }));
}

function compare(a, b, key, text) {
  const x = a[key];
  const y = b[key];
  if (x === null || x === undefined) return y === null || y === undefined ? 0 : 1; // empty last
  if (y === null || y === undefined) return -1;
  return state.sortDir * (text ? String(x).localeCompare(String(y)) : x - y);
}

function render() {
  const cols = columns();
  const sortCol = cols.find((c) => c.key === state.sortKey);
  const rows = [...state.rows].sort(
    (a, b) => compare(a, b, state.sortKey, sortCol.text) || a.name.localeCompare(b.name),
  );
  for (const c of cols) {
    if (c.key === state.sortKey) c.th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
    else c.th.removeAttribute("aria-sort");
  }
  el.rows.replaceChildren();
  if (!rows.length) {
    const tr = el.rows.insertRow();
    const td = tr.insertCell();
    td.colSpan = cols.length;
    td.className = "empty";
    td.textContent = "Nobody has leased or answered a task of this project in this period.";
    return;
  }
  for (const row of rows) {
    const tr = el.rows.insertRow();
    tr.dataset.userId = String(row.user_id);
    for (const c of cols) {
      const v = row[c.key];
      tr.insertCell().textContent = v === null || v === undefined ? "–" : c.fmt(v);
    }
  }
}

el.table.querySelector("thead").addEventListener("click", (e) => {
  const th = e.target instanceof Element ? e.target.closest("th") : null;
  if (!th) return;
  if (state.sortKey === th.dataset.key) state.sortDir = -state.sortDir;
  else {
    state.sortKey = th.dataset.key;
    state.sortDir = th.dataset.kind === "text" ? 1 : -1; // numbers: largest first
  }
  render();
});

function reportError(err) {
  setStatus(err instanceof Error ? err.message : String(err), "error");
}

el.loginForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const token = el.token.value.trim();
  if (!token) return;
  el.token.value = "";
  setStatus("Checking the token…");
  login(token).catch(reportError);
});
el.logout.addEventListener("click", () => toLogin());
el.project.addEventListener("change", () => loadStats().catch(reportError));
el.period.addEventListener("submit", (e) => {
  e.preventDefault();
  loadStats().catch(reportError);
});

if (state.token) {
  setStatus("Checking the token…");
  login(state.token).catch(reportError);
} else {
  toLogin();
}
