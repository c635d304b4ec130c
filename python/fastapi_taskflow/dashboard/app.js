/* fastapi-taskflow dashboard: plain JavaScript, no build step, no network fetch beyond this app.
 *
 * The table shows one page of the server's list (GET {base}?status&name&tag&limit&cursor), and is
 * kept current by the numbered deltas of GET {base}/dashboard/stream. Each delta carries the
 * whole record (without its logs), so applying it is an upsert, and applying one twice is
 * harmless; the browser's EventSource resumes after the last id it saw.
 *
 * Actions (retry, bulk retry, cancel, clear history) go through the task routes after an in-page
 * confirmation; their effects come back through the same stream. Deletions have no stream event,
 * so the rows a deletion removes are dropped here, or the page is reloaded.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("taskflow-config").textContent);
  const base = location.pathname.replace(/\/dashboard\/?$/, "");
  const STATUSES = ["pending", "running", "success", "failed", "interrupted", "cancelled", "rejected"];
  const RETRYABLE = new Set(["failed", "interrupted", "rejected"]);
  const CANCELLABLE = new Set(["pending", "running"]);
  const CHART_SECONDS = 300;

  const state = {
    rows: [],
    cursors: [null], // cursor of each page visited; page i is fetched with cursors[i]
    page: 0,
    next: null,
    pageSize: Number(localStorage.getItem("taskflow.pageSize")) || 30,
    filters: { status: "", name: "", tag: "", window: 0 },
    sort: null, // {key, dir}
    paused: false,
    newWhilePaused: 0,
    loading: false,
    pending: [], // deltas received while a page loads
    selected: null, // task id in the detail panel
    detail: null,
    metrics: null,
    series: [],
    seq: 0,
    boot: null,
    source: null,
    reconnectTimer: null,
    registered: [],
    args: null, // {id, text} of the detail panel's arguments
    argsRequested: null,
    note: null, // {id, kind, parts}: the result of an action, shown in that task's panel
    audit: null, // entries of GET {base}/audit once the tab was opened
    queues: null, // GET {base}/queues, then each metrics tick's "queues"
  };

  /* The dead letters: one page merged from one server list per status, newest first. A
     position holds, per status, the cursor to continue from (null: from the newest; false:
     that list is exhausted). */
  const dead = {
    statuses: ["failed", "interrupted"],
    positions: [{}],
    page: 0,
    next: null,
    rows: [],
    selected: new Set(),
    loading: false,
    loaded: false,
    pending: [],
  };

  const $ = (id) => document.getElementById(id);

  /* ---------------------------------------------------------------- helpers */

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 0.001) return (seconds * 1e6).toFixed(0) + " µs";
    if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0) + " ms";
    if (seconds < 60) return seconds.toFixed(2) + " s";
    const m = Math.floor(seconds / 60);
    const s = Math.round(seconds - m * 60);
    return m + "m " + String(s).padStart(2, "0") + "s";
  }

  function fmtMs(ms) {
    return ms === null || ms === undefined ? "–" : fmtDuration(ms / 1000);
  }

  function fmtTime(iso, withDate) {
    if (!iso) return "–";
    const d = new Date(typeof iso === "number" ? iso * 1000 : iso);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (sameDay && !withDate) return time;
    return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" }) + " " + time;
  }

  function fmtCount(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString();
  }

  /* A span of time for people: "25 s", "4 min 12 s" (seconds matter while it is near), "2 h 5 min", "3 days 4 h". */
  function fmtSpan(seconds) {
    const s = Math.floor(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) {
      const m = Math.floor(s / 60);
      return m + " min" + (m < 10 && s % 60 ? " " + (s % 60) + " s" : "");
    }
    if (s < 86400) {
      const m = Math.floor((s % 3600) / 60);
      return Math.floor(s / 3600) + " h" + (m ? " " + m + " min" : "");
    }
    const d = Math.floor(s / 86400);
    const hours = Math.floor((s % 86400) / 3600);
    return d + (d === 1 ? " day" : " days") + (hours ? " " + hours + " h" : "");
  }

  /* "in 25 s" or "3 min ago"; `due` is said instead of "ago" for a time something was to happen at. */
  function fmtRelative(iso, due) {
    const delta = (Date.parse(iso) - Date.now()) / 1000;
    if (delta >= 1) return "in " + fmtSpan(delta);
    if (due) return due;
    return delta > -1 ? "just now" : fmtSpan(-delta) + " ago";
  }

  /* A relative time that the page keeps current (see refreshTimes), with the absolute one on hover. */
  function relTime(iso, due) {
    return h("time", { datetime: iso, title: fmtTime(iso, true), "data-due": due || null, text: fmtRelative(iso, due) });
  }

  function refreshTimes(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      el.textContent = fmtRelative(el.getAttribute("datetime"), el.dataset.due);
    }
  }

  /* Sort key of the server's order: (created_at, task_id), newest first. ISO strings of one
     format compare as text once the fraction, omitted when zero, is written out. */
  function orderKey(task) {
    let created = task.created_at || "";
    if (created.length > 19 && created[19] !== ".") created = created.slice(0, 19) + ".000000" + created.slice(19);
    return created + " " + task.task_id;
  }

  async function api(path) {
    const response = await fetch(base + path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) {
      toLogin();
      throw new Error("signed out");
    }
    return response;
  }

  function errorText(data, response) {
    const detail = data && data.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map(validationError).join("; ");
    return response.status + " " + (response.statusText || "error");
  }

  /* One entry of a 422's detail, named by the field it is about: "concurrency: Input should be ...".
     FastAPI's loc is [where ("body", "query"...), field, then what lies inside the field]. */
  function validationError(d) {
    if (!d || !d.msg) return JSON.stringify(d);
    const field = Array.isArray(d.loc) && d.loc.length > 1 ? d.loc[1] : null;
    return typeof field === "string" ? field + ": " + d.msg : d.msg;
  }

  /* A state-changing request. Same-origin fetches carry Sec-Fetch-Site: same-origin (and
     Origin), which is what the server's cross-site guard checks; the session cookie rides along. */
  let acting = false; // one action at a time: a second click while one is on its way does nothing

  async function send(method, path, body) {
    if (acting) return { ok: false, status: 0, error: "another action is still on its way" };
    acting = true;
    try {
      return await sendNow(method, path, body);
    } finally {
      acting = false;
    }
  }

  async function sendNow(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(base + path, init);
    } catch (error) {
      return { ok: false, status: 0, error: "the server could not be reached (" + error.message + ")" };
    }
    if (response.status === 401) {
      toLogin();
      return { ok: false, status: 401, error: "signed out" };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      /* no JSON body */
    }
    if (!response.ok) return { ok: false, status: response.status, error: errorText(data, response) };
    return { ok: true, status: response.status, data };
  }

  function count(value) {
    return Array.isArray(value) ? value.length : Number(value) || 0;
  }

  function plural(n, word) {
    return fmtCount(n) + " " + word + (n === 1 ? "" : "s");
  }

  /* A message above the tabs' content: the outcome of a bulk action. */
  function flash(kind, ...parts) {
    const el = $("flash");
    $("flash-text").replaceChildren(...parts.flat(Infinity).map((p) => (p instanceof Node ? p : document.createTextNode(String(p)))));
    el.dataset.kind = kind;
    el.hidden = false;
  }

  function taskLink(taskId, attrs) {
    return h("a", Object.assign({ href: "#", class: "task-link", "data-task": taskId, text: taskId.slice(0, 8), title: taskId }, attrs || {}));
  }

  /* The confirmation dialog: resolves true when the user confirms. Escape or the other button
     dismisses it. Enter in a field of the body confirms (the first button is the default one).

     With `accept` (an async function returning an error message, or nothing when done), the
     dialog stays open on confirm until accept succeeds, showing its message otherwise: the
     fields keep what the user typed while they fix it. accept validates by itself, so the
     browser's own validation is off then. */
  function confirmDialog(options) {
    const dialog = $("confirm");
    const form = $("confirm-form");
    const error = $("confirm-error");
    $("confirm-title").textContent = options.title;
    $("confirm-body").replaceChildren(...[options.body].flat(Infinity).filter(Boolean).map((p) => (p instanceof Node ? p : h("p", { text: p }))));
    error.hidden = true;
    form.noValidate = Boolean(options.accept);
    const ok = $("confirm-ok");
    ok.textContent = options.confirm || "OK";
    ok.className = options.danger ? "danger" : "primary";
    $("confirm-cancel").textContent = options.dismiss || "Cancel";
    return new Promise((resolve) => {
      let closed = false; // dismissed while accept was on its way: its answer no longer concerns this dialog
      const submit = async (e) => {
        if (!options.accept || e.submitter !== ok) return;
        e.preventDefault();
        ok.disabled = true;
        const problem = await options.accept();
        ok.disabled = false;
        if (closed) return;
        if (!problem) {
          dialog.close("ok");
          return;
        }
        error.textContent = problem;
        error.hidden = false;
        // Disabling the focused button dropped the focus: keep it in the dialog.
        if (!dialog.contains(document.activeElement)) ok.focus();
      };
      form.addEventListener("submit", submit);
      dialog.returnValue = "";
      dialog.addEventListener(
        "close",
        () => {
          closed = true;
          form.removeEventListener("submit", submit);
          resolve(dialog.returnValue === "ok");
        },
        { once: true },
      );
      dialog.showModal();
      const field = dialog.querySelector("#confirm-body input:not(:disabled), #confirm-body select");
      (field || (options.danger ? $("confirm-cancel") : ok)).focus();
    });
  }

  /* Records a deletion removed (a retry that replaces its original, cleared history). */
  function dropRows(ids) {
    const gone = new Set(ids);
    if (!gone.size) return;
    state.rows = state.rows.filter((t) => !gone.has(t.task_id));
    dead.rows = dead.rows.filter((t) => !gone.has(t.task_id));
    for (const id of gone) dead.selected.delete(id);
    scheduleRender();
  }

  function afterAction() {
    loadMetrics();
    if (state.audit !== null) loadAudit();
  }

  function toLogin() {
    if (config.auth) location.assign(base + "/auth/login");
  }

  function notice(text) {
    const el = $("notice");
    el.textContent = text || "";
    el.hidden = !text;
  }

  /* ------------------------------------------------------------- the table */

  function queryString(cursor) {
    const params = new URLSearchParams();
    if (state.filters.status) params.set("status", state.filters.status);
    if (state.filters.name) params.set("name", state.filters.name);
    if (state.filters.tag) params.set("tag", state.filters.tag);
    params.set("limit", String(state.pageSize));
    if (cursor) params.set("cursor", cursor);
    return "?" + params.toString();
  }

  function windowCutoff() {
    return state.filters.window ? Date.now() - state.filters.window * 1000 : null;
  }

  function matches(task) {
    if (state.filters.status && task.status !== state.filters.status) return false;
    if (state.filters.name && task.func_name !== state.filters.name) return false;
    if (state.filters.tag) {
      const at = state.filters.tag.indexOf("=");
      const tags = task.tags || {};
      const key = state.filters.tag.slice(0, at);
      if (!Object.prototype.hasOwnProperty.call(tags, key) || tags[key] !== state.filters.tag.slice(at + 1)) return false;
    }
    const cutoff = windowCutoff();
    if (cutoff !== null && Date.parse(task.created_at) < cutoff) return false;
    return true;
  }

  let loadToken = 0;
  async function loadPage() {
    const token = ++loadToken;
    state.loading = true;
    try {
      const response = await api(queryString(state.cursors[state.page]));
      if (!response.ok) {
        notice("Could not load tasks: " + response.status);
        return;
      }
      const rows = await response.json();
      if (token !== loadToken) return;
      let next = response.headers.get("X-Next-Cursor");
      const cutoff = windowCutoff();
      let shown = rows;
      if (cutoff !== null) {
        // The list is newest first, so the window is a prefix of it: stop paging at its edge.
        shown = rows.filter((t) => Date.parse(t.created_at) >= cutoff);
        if (shown.length < rows.length) next = null;
      }
      state.rows = shown;
      state.next = next;
      notice("");
    } catch (error) {
      if (token === loadToken) notice("Could not load tasks: " + error.message);
    } finally {
      if (token === loadToken) {
        state.loading = false;
        const queued = state.pending;
        state.pending = [];
        for (const event of queued) applyEvent(event);
        render();
      }
    }
  }

  let reloadTimer = null;
  function reloadSoon() {
    if (reloadTimer) return;
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      loadPage();
    }, 1000);
  }

  function displayedRows() {
    const rows = state.rows.slice();
    if (!state.sort) return rows;
    const { key, dir } = state.sort;
    const value = (t) => {
      if (key === "attempts") return t.retries_used;
      if (key === "created_at") return orderKey(t);
      if (key === "status") return STATUSES.indexOf(t.status);
      return t[key];
    };
    rows.sort((a, b) => {
      const va = value(a);
      const vb = value(b);
      if (va === vb) return 0;
      if (va === null || va === undefined) return 1;
      if (vb === null || vb === undefined) return -1;
      return (va < vb ? -1 : 1) * (dir === "asc" ? 1 : -1);
    });
    return rows;
  }

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
      if (dead.loaded) renderDead();
    });
  }

  function render() {
    const body = $("tasks").tBodies[0];
    const rows = displayedRows();
    const fragment = document.createDocumentFragment();
    for (const task of rows) {
      const tags = Object.entries(task.tags || {}).map(([k, v]) => h("span", { class: "tag", text: k + "=" + v }));
      const tr = h(
        "tr",
        { "data-id": task.task_id, "data-status": task.status, tabindex: "0", class: task.task_id === state.selected ? "selected" : null },
        h("td", {}, h("span", { class: "badge " + task.status, text: task.status })),
        h("td", { class: "fn", text: task.func_name, title: task.func_name }),
        h("td", { class: "tags" }, tags),
        h("td", { text: fmtTime(task.created_at), title: new Date(task.created_at).toString() }),
        h("td", { class: "num", text: fmtDuration(task.duration) }),
        h("td", { class: "num attempts", text: String((task.retries_used || 0) + 1) }),
        h("td", { class: "id", text: task.task_id.slice(0, 8), title: task.task_id }),
      );
      fragment.append(tr);
    }
    body.replaceChildren(fragment);
    $("empty").hidden = rows.length > 0 || state.loading;
    $("prev").disabled = state.page === 0;
    $("first").disabled = state.page === 0;
    $("next").disabled = !state.next;
    $("page-info").textContent = "Page " + (state.page + 1) + (state.rows.length ? " · " + state.rows.length + " rows" : "");
    for (const th of document.querySelectorAll("#tasks th[data-sort]")) {
      const sorted = state.sort && state.sort.key === th.dataset.sort;
      if (sorted) th.setAttribute("aria-sort", state.sort.dir === "asc" ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  /* A record from the stream: update its row, drop it when it no longer matches the
     filters, or insert it where the server's order puts it when it falls on this page. */
  function applyRecord(task, created) {
    if (state.paused) {
      if (created && state.page === 0 && matches(task)) {
        state.newWhilePaused += 1;
        renderPause();
      }
      return;
    }
    const index = state.rows.findIndex((t) => t.task_id === task.task_id);
    const ok = matches(task);
    if (index >= 0) {
      if (ok) state.rows[index] = task;
      else state.rows.splice(index, 1);
      scheduleRender();
      return;
    }
    if (!ok || state.page !== 0) return;
    const key = orderKey(task);
    const last = state.rows[state.rows.length - 1];
    if (state.next && last && key < orderKey(last)) return; // belongs to a later page
    let at = state.rows.findIndex((t) => orderKey(t) < key);
    if (at < 0) at = state.rows.length;
    state.rows.splice(at, 0, task);
    if (state.rows.length > state.pageSize * 3) reloadSoon(); // keep the first page bounded
    scheduleRender();
  }

  function applyEvent(event) {
    if (state.loading) {
      state.pending.push(event);
      return;
    }
    if (event.type === "log") {
      if (state.detail && event.task_id === state.selected) {
        state.detail.logs.push(event.line);
        appendLog(event.line);
      }
      return;
    }
    const task = event.task;
    if (!task) return;
    if (event.type === "created" && task.source === "scheduled") plans.stale = true;
    applyRecord(task, event.type === "created");
    applyDead(task);
    if (state.detail && task.task_id === state.selected) {
      // Stream records lack the detail-only keys (retry_of, logs_dropped): keep those.
      state.detail = Object.assign({}, state.detail, task, { logs: state.detail.logs });
      renderDetail();
    }
  }

  /* ------------------------------------------------------------- the stream */

  function setLive(text, kind) {
    const el = $("live");
    el.textContent = text;
    el.dataset.state = kind;
  }

  function connect() {
    if (state.source) state.source.close();
    clearTimeout(state.reconnectTimer);
    // A manual reconnect carries the last id in the query; the browser's own reconnects send Last-Event-ID.
    const url = base + "/dashboard/stream" + (state.boot ? "?after=" + state.seq : "");
    const source = new EventSource(url);
    state.source = source;
    source.addEventListener("hello", (e) => {
      const hello = JSON.parse(e.data);
      const restarted = state.boot !== null && hello.boot !== state.boot;
      const first = state.boot === null;
      state.boot = hello.boot;
      state.seq = Number(e.lastEventId) || hello.seq;
      state.series = hello.series || [];
      drawCharts();
      setLive(state.paused ? "Paused" : "Live", state.paused ? "paused" : "live");
      if (first || restarted) reloadAll();
    });
    source.addEventListener("message", (e) => {
      state.seq = Number(e.lastEventId);
      applyEvent(JSON.parse(e.data));
    });
    source.addEventListener("reset", (e) => {
      // We fell behind what the server keeps: reload what is on screen.
      state.seq = Number(e.lastEventId);
      reloadAll();
    });
    source.addEventListener("metrics", (e) => {
      const data = JSON.parse(e.data);
      state.metrics = data.metrics;
      if (data.queues) {
        state.queues = data.queues;
        if (!$("tab-queues").hidden) renderQueues();
      }
      state.series.push(data.point);
      if (state.series.length > 600) state.series.splice(0, state.series.length - 600);
      renderMetrics();
      drawCharts();
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (signed out, or gone): check, then retry ourselves.
        setLive("Disconnected", "disconnected");
        state.reconnectTimer = setTimeout(async () => {
          try {
            await api("/metrics");
          } catch (_) {
            /* offline: try the stream again anyway */
          }
          connect();
        }, 3000);
      } else {
        setLive("Reconnecting", "reconnecting");
      }
    });
  }

  function reloadAll() {
    loadPage();
    loadMetrics();
    if (dead.loaded) loadDead();
    if (state.selected) openDetail(state.selected);
    plans.stale = true;
  }

  /* ------------------------------------------------------------ the metrics */

  async function loadMetrics() {
    try {
      const response = await api("/metrics");
      if (response.ok) {
        state.metrics = await response.json();
        renderMetrics();
      }
    } catch (_) {
      /* shown as stale; the stream brings the next tick */
    }
  }

  function renderMetrics() {
    const m = state.metrics;
    if (!m) return;
    const set = (name, text) => {
      const el = document.querySelector('[data-metric="' + name + '"]');
      if (el) el.textContent = text;
    };
    for (const key of ["total", "pending", "running", "success", "failed"]) set(key, fmtCount(m[key]));
    set("other", fmtCount((m.interrupted || 0) + (m.cancelled || 0) + (m.rejected || 0)));
    const finished = (m.success || 0) + (m.failed || 0) + (m.interrupted || 0) + (m.cancelled || 0) + (m.rejected || 0);
    set("success_rate", finished ? ((100 * (m.success || 0)) / finished).toFixed(1) + "%" : "–");
    set(
      "percentiles",
      [m.p50_seconds, m.p95_seconds, m.p99_seconds].map((v) => (v === null || v === undefined ? "–" : fmtDuration(v))).join(" · "),
    );
    const names = new Set(state.registered.map((r) => r.name));
    for (const name of Object.keys(m.by_name || {})) names.add(name);
    const list = $("names");
    if (list.options.length !== names.size) {
      list.replaceChildren(...[...names].sort().map((n) => h("option", { value: n })));
    }
    if (!$("tab-registered").hidden) renderRegistered();
    renderSnapshot(m.snapshot);
  }

  /* The snapshot file's health: hidden without a file, a warning with the error when writes fail. */
  function renderSnapshot(snapshot) {
    const el = $("snapshot");
    if (!snapshot) {
      el.hidden = true;
      return;
    }
    el.hidden = false;
    const waiting = snapshot.unwritten ? plural(snapshot.unwritten, "record") + " waiting to be written" : "nothing waiting";
    if (snapshot.ok) {
      el.dataset.state = "ok";
      el.textContent = "Saved";
      el.title = "Snapshot file healthy: " + waiting + (snapshot.last_write_at ? "; last write " + fmtTime(snapshot.last_write_at, true) : "");
    } else {
      el.dataset.state = "warn";
      el.textContent = "Snapshot failing: " + (snapshot.last_error || "write error");
      el.title =
        "The snapshot file cannot be written (" + plural(snapshot.failed_writes || 0, "failed write") + ", " + waiting + "): " +
        (snapshot.last_error || "unknown error") + ". Tasks keep running from memory.";
    }
  }

  /* Charts: our own SVG. x spans the last five minutes; y scales to the largest value. */
  function drawCharts() {
    const now = Date.now();
    const from = now - CHART_SECONDS * 1000;
    const points = state.series.filter((p) => p.t >= from);
    const perSecond = (p, key) => (p.s > 0 ? p[key] / p.s : 0);
    drawChart($("chart-throughput"), points, from, now, [
      { key: (p) => perSecond(p, "finished"), cls: "finished", area: true },
      { key: (p) => perSecond(p, "failed"), cls: "failed" },
    ], (max) => ($("throughput-max").textContent = "max " + max.toFixed(max < 10 ? 1 : 0) + "/s"));
    drawChart($("chart-latency"), points, from, now, [
      { key: (p) => p.p50_ms, cls: "p50", area: true },
      { key: (p) => p.p95_ms, cls: "p95" },
    ], (max) => ($("latency-max").textContent = "max " + fmtMs(max)));
  }

  function drawChart(svg, points, from, now, lines, label) {
    const W = 600;
    const H = 100;
    const ns = "http://www.w3.org/2000/svg";
    let max = 0;
    for (const line of lines) for (const p of points) {
      const v = line.key(p);
      if (v !== null && v !== undefined && v > max) max = v;
    }
    label(max);
    const scale = max > 0 ? max * 1.1 : 1;
    const x = (t) => ((t - from) / (now - from)) * W;
    const y = (v) => H - (v / scale) * H;
    const children = [];
    for (const frac of [0.25, 0.5, 0.75]) {
      const g = document.createElementNS(ns, "line");
      g.setAttribute("class", "grid");
      g.setAttribute("x1", "0");
      g.setAttribute("x2", String(W));
      g.setAttribute("y1", String(H * frac));
      g.setAttribute("y2", String(H * frac));
      children.push(g);
    }
    for (const line of lines) {
      const coords = [];
      for (const p of points) {
        const v = line.key(p);
        if (v === null || v === undefined) continue;
        coords.push(x(p.t).toFixed(1) + "," + y(v).toFixed(1));
      }
      if (coords.length === 0) continue;
      if (line.area && coords.length > 1) {
        const area = document.createElementNS(ns, "polygon");
        const firstX = coords[0].split(",")[0];
        const lastX = coords[coords.length - 1].split(",")[0];
        area.setAttribute("points", firstX + "," + H + " " + coords.join(" ") + " " + lastX + "," + H);
        area.setAttribute("class", "area a-" + line.cls);
        children.push(area);
      }
      const poly = document.createElementNS(ns, "polyline");
      poly.setAttribute("points", coords.join(" "));
      poly.setAttribute("class", "l-" + line.cls);
      children.push(poly);
    }
    svg.replaceChildren(...children);
  }

  /* --------------------------------------------------------- detail panel */

  async function openDetail(taskId) {
    state.selected = taskId;
    let response;
    try {
      response = await api("/" + encodeURIComponent(taskId));
    } catch (_) {
      return;
    }
    if (response.status === 404) {
      if (state.selected !== taskId) return;
      if (state.detail && state.detail.task_id !== taskId) {
        // A link to a task that left the history: keep the panel on the task it showed.
        state.selected = state.detail.task_id;
        flash("error", "Task " + taskId + " is no longer in the history.");
      } else {
        closeDetail();
        notice("No task with id " + taskId);
      }
      return;
    }
    if (!response.ok || state.selected !== taskId) return;
    state.detail = await response.json();
    if (state.note && state.note.id !== taskId) state.note = null;
    $("panel").hidden = false;
    renderDetail();
    scheduleRender();
  }

  function closeDetail() {
    state.selected = null;
    state.detail = null;
    state.note = null;
    $("panel").hidden = true;
    scheduleRender();
  }

  function setNote(taskId, kind, ...parts) {
    state.note = { id: taskId, kind, parts: parts.flat() };
    if (state.detail && state.detail.task_id === taskId) renderDetail();
  }

  async function retryTask(t) {
    const body = [
      "Runs " + t.func_name + " again as a new task, with the same arguments and tags.",
      config.retryReplaces ? h("p", { class: "warn", text: "The new task replaces this one: this record leaves the history." }) : null,
      t.status === "rejected" ? h("p", { class: "warn", text: "This task was rejected (a full queue): it may be rejected again." }) : null,
    ];
    const ok = await confirmDialog({ title: "Retry " + t.func_name + "?", body, confirm: "Retry" });
    if (!ok) return;
    const result = await send("POST", "/" + encodeURIComponent(t.task_id) + "/retry");
    if (!result.ok) {
      setNote(t.task_id, "error", "Retry refused: " + result.error);
      return;
    }
    const newId = result.data.task_id;
    if (config.retryReplaces) dropRows([t.task_id]);
    afterAction();
    state.note = { id: newId, kind: "ok", parts: ["New task created by retrying ", taskLink(t.task_id, { id: "note-original" }), "."] };
    await openDetail(newId);
  }

  async function cancelTask(t) {
    const body = [
      t.status === "pending"
        ? "The task has not started: it will not run."
        : "The task is running: its current attempt is stopped and it ends as cancelled.",
    ];
    const ok = await confirmDialog({ title: "Cancel " + t.func_name + "?", body, confirm: "Cancel task", dismiss: "Keep it", danger: true });
    if (!ok) return;
    const result = await send("POST", "/" + encodeURIComponent(t.task_id) + "/cancel");
    if (!result.ok) {
      setNote(t.task_id, "error", "Cancel refused: " + result.error);
      return;
    }
    afterAction();
    const task = result.data.task;
    const done = task && task.status === "cancelled";
    // A running task may still show running in the answer, and the stream may have brought
    // "cancelled" already: only a finished record can be applied without going back in time.
    if (done && state.detail && state.detail.task_id === t.task_id) {
      state.detail = Object.assign({}, state.detail, task, { logs: state.detail.logs });
      applyRecord(task, false);
    }
    setNote(t.task_id, "ok", done ? "Cancelled." : "Cancellation requested: the status follows live.");
  }

  async function loadArguments(taskId) {
    try {
      const response = await api("/dashboard/arguments/" + encodeURIComponent(taskId));
      if (!response.ok || state.selected !== taskId) return;
      const data = await response.json();
      const text = data.stored
        ? "args: " + JSON.stringify(data.args) + "\nkwargs: " + JSON.stringify(data.kwargs)
        : "Not stored: only tasks of persist=True functions keep their arguments, with a snapshot file.";
      state.args = { id: taskId, text };
      const el = $("detail-args");
      if (el) el.textContent = text;
    } catch (_) {
      /* the panel keeps its placeholder */
    }
  }

  function logLine(line) {
    if (line.startsWith("--- ")) return h("div", { class: "sep", text: line });
    if (/^\d{4}-\d\d-\d\dT/.test(line) && line.length > 20) {
      return h("div", {}, h("span", { class: "ts", text: line.slice(0, 20) }), line.slice(20));
    }
    return h("div", { text: line });
  }

  function appendLog(line) {
    const logs = $("detail-logs");
    if (!logs) return;
    const stick = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    if (logs.dataset.empty) {
      logs.replaceChildren();
      delete logs.dataset.empty;
    }
    logs.append(logLine(line));
    if (stick) logs.scrollTop = logs.scrollHeight;
  }

  async function copyText(text, button) {
    try {
      if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(text);
      else {
        const area = h("textarea", { readonly: true });
        area.value = text;
        document.body.append(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      button.textContent = "Copied";
    } catch (_) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = "Copy"), 1200);
  }

  function renderDetail() {
    const t = state.detail;
    if (!t) return;
    const panel = $("panel-body");
    const previousLogs = $("detail-logs");
    const logScroll = previousLogs ? previousLogs.scrollTop : null;
    const waited = t.start_time ? (Date.parse(t.start_time) - Date.parse(t.created_at)) / 1000 : null;
    const stats = state.metrics && state.metrics.by_name ? state.metrics.by_name[t.func_name] : null;
    const copy = h("button", { type: "button", class: "icon", text: "Copy", title: "Copy the task id" });
    copy.addEventListener("click", () => copyText(t.task_id, copy));
    const tags = Object.entries(t.tags || {});
    const logs = h("pre", { class: "block logs", id: "detail-logs" });
    if (t.logs && t.logs.length) logs.append(...t.logs.map(logLine));
    else {
      logs.dataset.empty = "1";
      logs.append(h("span", { class: "muted", text: "No log lines yet." }));
    }
    const facts = [
      ["Created", fmtTime(t.created_at, true)],
      ["Started", fmtTime(t.start_time, true)],
      ["Ended", fmtTime(t.end_time, true)],
      ["Waited", fmtDuration(waited)],
      ["Duration", fmtDuration(t.duration)],
      ["Attempts", String((t.retries_used || 0) + 1) + (t.retries_used ? " (" + t.retries_used + " retries)" : "")],
      ["Executor", t.executor || "–"],
      ["Queue", t.queue || "default"],
      ["Source", t.source || "manual"],
      ["Priority", t.priority === null || t.priority === undefined ? "–" : String(t.priority)],
    ];
    if (t.retry_of) facts.push(["Retry of", taskLink(t.retry_of, { id: "detail-retry-of" })]);
    const actions = [];
    if (RETRYABLE.has(t.status)) {
      actions.push(h("button", { type: "button", class: "primary", id: "detail-retry", text: "Retry", onclick: () => retryTask(t) }));
    }
    if (CANCELLABLE.has(t.status)) {
      actions.push(h("button", { type: "button", class: "danger-outline", id: "detail-cancel", text: "Cancel", onclick: () => cancelTask(t) }));
    }
    const note = state.note && state.note.id === t.task_id ? state.note : null;
    const parts = [
      h(
        "div",
        { class: "panel-head" },
        h("h2", { text: t.func_name, title: t.func_name }),
        h("span", { class: "badge " + t.status, id: "detail-status", text: t.status }),
        h("button", { type: "button", class: "icon", id: "detail-close", text: "Close", onclick: closeDetail }),
      ),
      h("div", { class: "idline" }, h("code", { id: "detail-id", text: t.task_id }), copy),
      actions.length ? h("div", { class: "actions", id: "detail-actions" }, actions) : null,
      note ? h("p", { class: "result " + note.kind, id: "detail-result", role: "status" }, note.parts) : null,
      h("h3", { text: "Timings" }),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)])),
      tags.length ? [h("h3", { text: "Tags" }), h("div", {}, tags.map(([k, v]) => h("span", { class: "tag", text: k + "=" + v })))] : null,
      config.displayArgs ? [h("h3", { text: "Arguments" }), h("pre", { class: "block", id: "detail-args", text: state.args && state.args.id === t.task_id ? state.args.text : "Loading…" })] : null,
      t.error || t.stacktrace
        ? [
            h("h3", { text: "Error" }),
            h("pre", { class: "block error-message", id: "detail-error", text: t.error || "" }),
            t.stacktrace ? h("pre", { class: "block", id: "detail-trace", text: t.stacktrace }) : null,
          ]
        : null,
      h("h3", { text: "Logs" }),
      t.logs_dropped ? h("p", { class: "muted small", id: "detail-logs-dropped", text: plural(t.logs_dropped, "earlier line") + " dropped (the per-task log bound)." }) : null,
      logs,
      stats
        ? [
            h("h3", { text: "All runs of " + t.func_name }),
            h(
              "dl",
              { class: "facts" },
              [
                ["Runs", fmtCount(stats.total)],
                ["Success", fmtCount(stats.success)],
                ["Failed", fmtCount(stats.failed)],
                ["Running", fmtCount(stats.running)],
                ["Success rate", stats.total ? (100 * stats.success_rate).toFixed(1) + "%" : "–"],
                ["Average", fmtDuration(stats.avg_duration_seconds)],
                ["p50 · p95 · p99", [stats.p50_seconds, stats.p95_seconds, stats.p99_seconds].map(fmtDuration).join(" · ")],
              ].map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]),
            ),
          ]
        : null,
    ];
    panel.replaceChildren(...parts.flat(Infinity).filter(Boolean));
    const newLogs = $("detail-logs");
    if (logScroll !== null) newLogs.scrollTop = logScroll;
    if (config.displayArgs && state.argsRequested !== t.task_id) {
      state.argsRequested = t.task_id;
      loadArguments(t.task_id);
    }
  }

  function setupResizer() {
    const panel = $("panel");
    const saved = Number(localStorage.getItem("taskflow.panelWidth"));
    if (saved) panel.style.width = saved + "px";
    const handle = $("resizer");
    handle.addEventListener("pointerdown", (down) => {
      down.preventDefault();
      handle.setPointerCapture(down.pointerId);
      handle.classList.add("dragging");
      const move = (e) => {
        const width = Math.min(Math.max(window.innerWidth - e.clientX, 320), window.innerWidth - 240);
        panel.style.width = width + "px";
      };
      const up = () => {
        handle.classList.remove("dragging");
        handle.removeEventListener("pointermove", move);
        handle.removeEventListener("pointerup", up);
        localStorage.setItem("taskflow.panelWidth", String(parseInt(panel.style.width, 10)));
      };
      handle.addEventListener("pointermove", move);
      handle.addEventListener("pointerup", up);
    });
  }

  /* ------------------------------------------------------- registered tab */

  async function loadRegistered() {
    try {
      const response = await api("/dashboard/registered");
      if (response.ok) state.registered = await response.json();
    } catch (_) {
      return;
    }
    renderRegistered();
    renderMetrics();
  }

  /* A function name that opens the Tasks tab filtered to that function. */
  function functionLink(name) {
    return h("a", {
      href: "#",
      text: name,
      title: "Show the tasks of " + name,
      onclick: (e) => {
        e.preventDefault();
        $("name").value = name;
        state.filters.name = name;
        selectTab("tasks");
        resetPaging();
      },
    });
  }

  function renderRegistered() {
    const byName = (state.metrics && state.metrics.by_name) || {};
    const rows = state.registered.map((r) => {
      const s = byName[r.name];
      return h(
        "tr",
        {},
        h("td", { class: "fn" }, functionLink(r.name)),
        h("td", { text: r.executor }),
        h("td", { class: "num", text: String(r.retries) }),
        h("td", { class: "num", text: r.delay + " s" }),
        h("td", { class: "num", text: "×" + r.backoff }),
        h("td", { text: r.persist ? "yes" : "no" }),
        h("td", { class: "num", text: s ? fmtCount(s.total) : "0" }),
        h("td", { class: "num", text: s && s.total ? (100 * s.success_rate).toFixed(1) + "%" : "–" }),
        h("td", { class: "num", text: s ? fmtDuration(s.p50_seconds) : "–" }),
        h("td", { class: "num", text: s ? fmtDuration(s.p95_seconds) : "–" }),
      );
    });
    $("registered").tBodies[0].replaceChildren(...rows);
    $("registered-empty").hidden = rows.length > 0;
  }

  /* ------------------------------------------------------- dead letters */

  async function fetchList(status, cursor, limit) {
    const params = new URLSearchParams({ status, limit: String(limit) });
    if (cursor) params.set("cursor", cursor);
    const response = await api("?" + params.toString());
    if (!response.ok) throw new Error("status " + response.status);
    return { rows: await response.json(), next: response.headers.get("X-Next-Cursor") };
  }

  let deadToken = 0;
  async function loadDead() {
    const token = ++deadToken;
    dead.loading = true;
    const at = dead.positions[dead.page] || {};
    const size = state.pageSize;
    try {
      const open = dead.statuses.filter((s) => at[s] !== false);
      const lists = await Promise.all(open.map((s) => fetchList(s, at[s] || null, size)));
      const merged = [];
      open.forEach((s, i) => lists[i].rows.forEach((task) => merged.push({ task, s })));
      merged.sort((a, b) => (orderKey(a.task) < orderKey(b.task) ? 1 : -1));
      const taken = merged.slice(0, size);
      // Where each list goes on from: after its last row shown. A list only partly shown is
      // asked again for just that many rows, so its cursor stays the server's own.
      const next = {};
      let more = false;
      for (const [i, s] of open.entries()) {
        const used = taken.filter((x) => x.s === s).length;
        if (used === lists[i].rows.length) next[s] = lists[i].next || false;
        else if (used === 0) next[s] = at[s] || null;
        else next[s] = (await fetchList(s, at[s] || null, used)).next || false;
        if (next[s] !== false) more = true;
      }
      for (const s of dead.statuses) if (at[s] === false) next[s] = false;
      if (token !== deadToken) return;
      dead.rows = taken.map((x) => x.task);
      dead.next = more ? next : null;
      dead.loaded = true;
    } catch (error) {
      if (token === deadToken) flash("error", "Could not load the failed tasks: " + error.message);
    } finally {
      if (token === deadToken) {
        dead.loading = false;
        const queued = dead.pending;
        dead.pending = [];
        for (const task of queued) applyDead(task);
        renderDead();
      }
    }
  }

  function resetDead() {
    dead.positions = [{}];
    dead.page = 0;
    dead.next = null;
    loadDead();
  }

  /* A record from the stream: a task that just failed joins the first page; one that left the
     failed statuses leaves it. */
  function applyDead(task) {
    if (!dead.loaded) return;
    if (dead.loading) {
      dead.pending.push(task);
      return;
    }
    const index = dead.rows.findIndex((t) => t.task_id === task.task_id);
    const ok = dead.statuses.includes(task.status);
    if (index >= 0) {
      if (ok) dead.rows[index] = task;
      else {
        dead.rows.splice(index, 1);
        dead.selected.delete(task.task_id);
      }
      scheduleRender();
      return;
    }
    if (!ok || dead.page !== 0) return;
    const key = orderKey(task);
    const last = dead.rows[dead.rows.length - 1];
    if (dead.next && last && key < orderKey(last)) return; // belongs to a later page
    let at = dead.rows.findIndex((t) => orderKey(t) < key);
    if (at < 0) at = dead.rows.length;
    dead.rows.splice(at, 0, task);
    if (dead.rows.length > state.pageSize * 3) resetDead();
    scheduleRender();
  }

  function renderDead() {
    const rows = dead.rows.map((task) => {
      const id = task.task_id;
      const pick = h("input", { type: "checkbox", class: "pick", "aria-label": "Select task " + id.slice(0, 8), checked: dead.selected.has(id) });
      return h(
        "tr",
        { "data-id": id, "data-status": task.status, tabindex: "0", class: id === state.selected ? "selected" : null },
        h("td", { class: "c-check" }, pick),
        h("td", {}, h("span", { class: "badge " + task.status, text: task.status })),
        h("td", { class: "fn", text: task.func_name, title: task.func_name }),
        h("td", { class: "error c-error", text: task.error || "", title: task.error || "" }),
        h("td", { text: fmtTime(task.created_at), title: new Date(task.created_at).toString() }),
        h("td", { class: "num attempts", text: String((task.retries_used || 0) + 1) }),
        h("td", { class: "id", text: id.slice(0, 8), title: id }),
      );
    });
    $("dead").tBodies[0].replaceChildren(...rows);
    $("dead-empty").hidden = rows.length > 0 || dead.loading;
    const onPage = dead.rows.filter((t) => dead.selected.has(t.task_id)).length;
    const all = $("dead-all");
    all.checked = onPage > 0 && onPage === dead.rows.length;
    all.indeterminate = onPage > 0 && onPage < dead.rows.length;
    all.disabled = dead.rows.length === 0;
    const button = $("dead-retry-selected");
    button.disabled = dead.selected.size === 0;
    button.textContent = dead.selected.size ? "Retry selected (" + dead.selected.size + ")" : "Retry selected";
    $("dead-prev").disabled = dead.page === 0;
    $("dead-first").disabled = dead.page === 0;
    $("dead-next").disabled = !dead.next;
    $("dead-page-info").textContent = "Page " + (dead.page + 1) + (dead.rows.length ? " · " + dead.rows.length + " rows" : "");
  }

  function reportRetries(data, what) {
    const dispatched = count(data.dispatched);
    const skipped = count(data.skipped);
    const results = data.results || [];
    if (config.retryReplaces) dropRows(results.map((r) => r.original_task_id));
    const links = results.slice(0, 5).map((r, i) => [i ? ", " : " New: ", taskLink(r.new_task_id)]);
    const more = results.length > 5 ? " and " + (results.length - 5) + " more" : "";
    flash(
      dispatched ? "ok" : "info",
      what + ": " + plural(dispatched, "task") + " retried" + (skipped ? ", " + fmtCount(skipped) + " skipped (no longer failed, or not registered)" : "") + ".",
      links,
      results.length ? more + "." : "",
    );
  }

  async function retrySelected() {
    const ids = [...dead.selected];
    if (!ids.length) return;
    const ok = await confirmDialog({
      title: "Retry " + plural(ids.length, "task") + "?",
      body: [
        "Each one runs again as a new task, with the same arguments and tags.",
        config.retryReplaces ? h("p", { class: "warn", text: "The new tasks replace these records in the history." }) : null,
      ],
      confirm: "Retry " + ids.length,
    });
    if (!ok) return;
    const result = await send("POST", "/bulk-retry", { task_ids: ids });
    if (!result.ok) {
      flash("error", "Bulk retry refused: " + result.error);
      return;
    }
    dead.selected.clear();
    reportRetries(result.data, "Bulk retry");
    afterAction();
    loadDead();
  }

  async function retryWindow() {
    const select = $("dead-window");
    const label = select.options[select.selectedIndex].text;
    const ok = await confirmDialog({
      title: "Retry every failed task of " + label + "?",
      body: [
        "Every failed or interrupted task created in " + label + " runs again as a new task. Rejected tasks are left alone.",
        config.retryReplaces ? h("p", { class: "warn", text: "The new tasks replace the failed records in the history." }) : null,
      ],
      confirm: "Retry all",
    });
    if (!ok) return;
    const result = await send("POST", "/retry-failed?since=" + encodeURIComponent(select.value));
    if (!result.ok) {
      flash("error", "Retry refused: " + result.error);
      return;
    }
    reportRetries(result.data, "Retry of " + label);
    afterAction();
    loadDead();
  }

  /* ------------------------------------------------------------ queues tab */

  const QUEUE_FIGURES = [
    ["pending", "Waiting"],
    ["running", "Running"],
    ["finished", "Finished"],
    ["rejected", "Rejected"],
  ];

  function limitText(limit) {
    return limit === null || limit === undefined ? "unlimited" : fmtCount(limit);
  }

  async function loadQueues() {
    try {
      const response = await api("/queues");
      if (!response.ok) {
        flash("error", "Could not load the queues: " + response.status);
        return;
      }
      state.queues = await response.json();
    } catch (_) {
      return;
    }
    renderQueues();
  }

  /* One card per queue, built when the set of queues changes and updated in place every
     second after that, so that a focused "Edit limits" button keeps its focus. */
  let queueCardsOf = null; // the JSON list of queue names the cards were built for
  function renderQueues() {
    const queues = state.queues;
    if (!queues) return;
    const grid = $("queues");
    $("queues-empty").hidden = queues.length > 0;
    const names = JSON.stringify(queues.map((q) => q.name));
    if (names !== queueCardsOf) {
      queueCardsOf = names;
      grid.replaceChildren(...queues.map(queueCard));
    }
    queues.forEach((q, i) => fillQueueCard(grid.children[i], q));
  }

  function queueCard(q, index) {
    const title = "queue-title-" + index;
    return h(
      "article",
      { class: "card queue", "data-queue": q.name, "aria-labelledby": title },
      h(
        "div",
        { class: "queue-head" },
        h("h3", { id: title, text: q.name, title: q.name }),
        h("span", { class: "badge rejected queue-full", text: "Full", title: "As many tasks wait as the queue allows: new ones are rejected", hidden: true }),
        h("span", { class: "spacer" }),
        h("button", { type: "button", class: "icon queue-edit", text: "Edit limits", "aria-label": "Edit limits of queue " + q.name, onclick: () => editLimits(q.name) }),
      ),
      h("p", { class: "queue-limits muted small" }),
      h("div", { class: "meter", role: "meter", "aria-valuemin": "0", "aria-label": "Running slots in use" }, h("span")),
      h("p", { class: "queue-usage small" }),
      h("dl", { class: "queue-figures" }, QUEUE_FIGURES.map(([key, label]) => h("div", {}, h("dt", { text: label }), h("dd", { "data-figure": key })))),
    );
  }

  function fillQueueCard(card, q) {
    const full = q.max_size !== null && q.pending >= q.max_size;
    card.dataset.full = String(full);
    card.querySelector(".queue-full").hidden = !full;
    card.querySelector(".queue-limits").textContent = "Concurrency " + limitText(q.concurrency) + " · max waiting " + limitText(q.max_size);
    const limited = q.concurrency !== null;
    const usage = limited
      ? fmtCount(q.running) + " of " + fmtCount(q.concurrency) + " running" +
        (q.running > q.concurrency ? ": over the lowered limit, nothing starts until fewer run" : "")
      : fmtCount(q.running) + " running";
    const meter = card.querySelector(".meter");
    meter.dataset.level = !limited ? "unlimited" : q.running >= q.concurrency ? "full" : "ok";
    meter.setAttribute("aria-valuemax", String(limited ? q.concurrency : Math.max(q.running, 1)));
    meter.setAttribute("aria-valuenow", String(limited ? Math.min(q.running, q.concurrency) : q.running));
    meter.setAttribute("aria-valuetext", usage);
    meter.firstChild.style.width = limited ? Math.min(100, (100 * q.running) / q.concurrency).toFixed(1) + "%" : "0";
    card.querySelector(".queue-usage").textContent = usage;
    for (const [key] of QUEUE_FIGURES) {
      const dd = card.querySelector('[data-figure="' + key + '"]');
      dd.textContent = fmtCount(q[key]);
      dd.classList.toggle("s-failed", key === "rejected" && q[key] > 0);
    }
  }

  /* A limit field of the queue dialog: a whole number, or "No limit" ticked. */
  function limitField(key, label, help, value) {
    const id = "limit-" + key;
    const input = h("input", { type: "number", id, min: "1", step: "1", inputmode: "numeric", "aria-describedby": id + "-help" });
    const unlimited = h("input", { type: "checkbox", id: id + "-none" });
    const sync = () => {
      input.disabled = unlimited.checked;
      input.placeholder = unlimited.checked ? "no limit" : "";
      input.removeAttribute("aria-invalid");
    };
    unlimited.addEventListener("change", () => {
      sync();
      if (!unlimited.checked) input.focus();
    });
    input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
    if (value === null) unlimited.checked = true;
    else input.value = String(value);
    sync();
    const el = h(
      "div",
      { class: "limit-field" },
      h("label", { for: id, text: label }),
      h("div", { class: "fields" }, input, h("label", { class: "check", for: id + "-none" }, unlimited, "No limit")),
      h("p", { class: "muted small", id: id + "-help", text: help }),
    );
    // The value to send, or the message that says why there is none.
    const read = () => {
      if (unlimited.checked) return { value: null };
      const number = input.value.trim() === "" ? NaN : Number(input.value);
      if (Number.isSafeInteger(number) && number >= 1) return { value: number };
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return { error: label + " must be a whole number of at least 1, or tick “No limit”." };
    };
    return { key, el, read };
  }

  async function editLimits(name) {
    const q = (state.queues || []).find((x) => x.name === name);
    if (!q) return;
    const fields = [
      limitField("concurrency", "Concurrency", "How many of its tasks run at once.", q.concurrency),
      limitField("max_size", "Max waiting", "How many may wait for a slot; more are rejected (QueueFullError).", q.max_size),
    ];
    let saved = null;
    const ok = await confirmDialog({
      title: "Limits of queue " + name,
      body: [
        fields.map((f) => f.el),
        h("p", { class: "muted", text: "They apply at once and last until the server restarts. A lower concurrency stops nothing that runs: no task starts until fewer run." }),
      ],
      confirm: "Save",
      accept: async () => {
        const limits = {};
        for (const field of fields) {
          const read = field.read();
          if (read.error) return read.error;
          limits[field.key] = read.value;
        }
        const result = await send("PATCH", "/queues/" + encodeURIComponent(name), limits);
        if (!result.ok) return "Not saved: " + result.error;
        saved = result.data;
        return null;
      },
    });
    if (!ok || !saved) return;
    const index = state.queues.findIndex((x) => x.name === name);
    if (index >= 0) state.queues[index] = Object.assign({}, state.queues[index], saved);
    renderQueues();
    flash("ok", "Queue " + name + ": concurrency " + limitText(saved.concurrency) + ", max waiting " + limitText(saved.max_size) + ".");
    afterAction();
  }

  /* --------------------------------------------------------- schedules tab */

  /* The tab reloads when a schedule fires (a scheduled task appears in the stream), when the
     next planned time has passed, and every SCHEDULES_REFRESH_MS in any case: runs planned or
     cancelled in code leave no trace in the stream. */
  const SCHEDULES_REFRESH_MS = 15000;
  const plans = { data: null, loadedAt: 0, stale: false, refreshAt: Infinity };

  function fmtEvery(seconds) {
    const units = [
      [86400, "day", " days"],
      [3600, "hour", " h"],
      [60, "minute", " min"],
    ];
    for (const [size, one, many] of units) {
      if (seconds >= size && seconds % size === 0) return "every " + (seconds === size ? one : seconds / size + many);
    }
    return seconds === 1 ? "every second" : "every " + seconds + " s";
  }

  let plansToken = 0;
  async function loadSchedules() {
    const token = ++plansToken;
    plans.stale = false;
    plans.loadedAt = Date.now();
    try {
      const response = await api("/schedules");
      if (!response.ok) {
        flash("error", "Could not load the schedules: " + response.status);
        return;
      }
      const data = await response.json();
      if (token !== plansToken) return;
      plans.data = data;
    } catch (_) {
      return;
    }
    renderSchedules();
  }

  function tickSchedules() {
    if ($("tab-schedules").hidden || !plans.data) return;
    const now = Date.now();
    if (plans.stale || now >= plans.refreshAt || now - plans.loadedAt >= SCHEDULES_REFRESH_MS) loadSchedules();
    else refreshTimes($("tab-schedules"));
  }

  function renderSchedules() {
    const recurring = plans.data.recurring.slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const oneOff = plans.data.one_off.slice().sort((a, b) => Date.parse(a.fire_at) - Date.parse(b.fire_at) || (a.run_key < b.run_key ? -1 : 1));
    const now = Date.now();
    const upcoming = [...recurring.map((r) => r.next_run), ...oneOff.map((r) => r.fire_at)].map(Date.parse).filter((t) => t > now);
    // Just after the soonest of them, the schedule it belongs to has fired and changed.
    plans.refreshAt = upcoming.length ? Math.min(...upcoming) + 1000 : Infinity;

    $("recurring").tBodies[0].replaceChildren(
      ...recurring.map((r) =>
        h(
          "tr",
          { class: "static", "data-schedule": r.name },
          h("td", { class: "fn" }, functionLink(r.name)),
          h(
            "td",
            { class: "trigger" },
            r.cron === null ? h("span", { text: fmtEvery(r.every) }) : [h("code", { text: r.cron }), " ", h("span", { class: "muted", text: r.timezone })],
          ),
          h("td", { text: r.queue }),
          h("td", { class: "next" }, relTime(r.next_run, "due now")),
          h("td", { class: "last c-last" }, r.last_run ? relTime(r.last_run) : h("span", { class: "muted", text: "not yet" })),
        ),
      ),
    );
    $("recurring-empty").hidden = recurring.length > 0;
    $("recurring-count").textContent = recurring.length ? String(recurring.length) : "";

    const table = $("one-off");
    const focused = table.contains(document.activeElement) ? document.activeElement.dataset.runKey : undefined;
    table.tBodies[0].replaceChildren(
      ...oneOff.map((run) => {
        const tags = Object.entries(run.tags || {}).map(([k, v]) => h("span", { class: "tag", text: k + "=" + v }));
        return h(
          "tr",
          { class: "static", "data-run-key": run.run_key },
          h("td", { class: "fires" }, relTime(run.fire_at, "due now")),
          h("td", { class: "fn" }, functionLink(run.func_name)),
          h("td", { text: run.queue }),
          h("td", { class: "num c-priority", text: run.priority === null || run.priority === undefined ? "–" : String(run.priority) }),
          h("td", { class: "tags c-tags" }, tags),
          h("td", { class: "id c-id", text: run.run_key, title: run.run_key + " · planned " + fmtTime(run.created_at, true) }),
          h(
            "td",
            { class: "row-action" },
            h("button", {
              type: "button",
              class: "icon danger-outline",
              "data-run-key": run.run_key,
              text: "Cancel",
              "aria-label": "Cancel the run " + run.run_key + " of " + run.func_name,
              onclick: () => cancelRun(run),
            }),
          ),
        );
      }),
    );
    // A reload rebuilds the rows: the Cancel button that had the focus gets it back.
    if (focused !== undefined) focusRunButton(focused);
    $("one-off-empty").hidden = oneOff.length > 0;
    $("one-off-count").textContent = oneOff.length ? String(oneOff.length) : "";
  }

  function focusRunButton(runKey) {
    const button = [...$("one-off").querySelectorAll("button[data-run-key]")].find((b) => b.dataset.runKey === runKey);
    if (button) button.focus();
    return Boolean(button);
  }

  async function cancelRun(run) {
    const ok = await confirmDialog({
      title: "Cancel the run of " + run.func_name + "?",
      body: [
        "Planned for " + fmtTime(run.fire_at, true) + " (" + fmtRelative(run.fire_at, "due now") + ") with run key " + run.run_key + ". It will not run.",
        h("p", { class: "muted", text: "Calling schedule_once again with the same run key plans it anew." }),
      ],
      confirm: "Cancel run",
      dismiss: "Keep it",
      danger: true,
    });
    if (!ok) return;
    const result = await send("DELETE", "/schedules/" + encodeURIComponent(run.run_key));
    if (result.ok) flash("ok", "Cancelled: " + run.func_name + " will not run at " + fmtTime(run.fire_at, true) + " (run key " + run.run_key + ").");
    else if (result.status === 404) flash("info", "Nothing to cancel: the run " + run.run_key + " has fired or was cancelled already.");
    else {
      flash("error", "Not cancelled: " + result.error);
      return;
    }
    // The focus goes to the run that takes this one's place, else the one before, else the tab.
    const keys = [...$("one-off").tBodies[0].rows].map((tr) => tr.dataset.runKey);
    const at = keys.indexOf(run.run_key);
    const neighbours = [keys[at + 1], keys[at - 1]].filter((k) => k !== undefined);
    plans.data.one_off = plans.data.one_off.filter((r) => r.run_key !== run.run_key);
    renderSchedules();
    if (!neighbours.some(focusRunButton)) $("tab-button-schedules").focus();
    afterAction();
    loadSchedules();
  }

  /* ------------------------------------------------------------- audit tab */

  async function loadAudit() {
    try {
      const response = await api("/audit");
      if (!response.ok) {
        flash("error", "Could not load the audit log: " + response.status);
        return;
      }
      state.audit = await response.json();
    } catch (_) {
      return;
    }
    renderAudit();
  }

  function renderAudit() {
    const entries = state.audit || [];
    const rows = entries.map((entry) => {
      const detail = entry.detail === null || entry.detail === undefined ? "" : typeof entry.detail === "string" ? entry.detail : JSON.stringify(entry.detail);
      const task = entry.task_id || "";
      // Bulk actions, queue edits and cancelled one-off runs (their run key) name no task.
      const isTask = task && task !== "bulk" && !/queue|schedul/.test(entry.action || "");
      return h(
        "tr",
        { "data-entry": entry.entry_id, "data-action": entry.action, class: "static" },
        h("td", { text: fmtTime(entry.timestamp, true) }),
        h("td", {}, h("span", { class: "action-name", text: entry.action })),
        h("td", { class: "id" }, isTask ? taskLink(task) : task),
        h("td", { class: "c-actor", text: entry.actor || "" }),
        h("td", { class: "detail c-detail", text: detail, title: detail }),
      );
    });
    $("audit").tBodies[0].replaceChildren(...rows);
    $("audit-empty").hidden = rows.length > 0;
  }

  /* ------------------------------------------------------- clear history */

  async function clearHistory() {
    const value = h("input", { type: "number", id: "clear-value", min: "1", step: "1", required: true, inputmode: "numeric", "aria-label": "How many" });
    value.value = localStorage.getItem("taskflow.clearValue") || "7";
    const unit = h(
      "select",
      { id: "clear-unit", "aria-label": "Unit" },
      h("option", { value: "min", text: "minutes" }),
      h("option", { value: "hour", text: "hours" }),
      h("option", { value: "day", text: "days" }),
    );
    unit.value = localStorage.getItem("taskflow.clearUnit") || "day";
    const ok = await confirmDialog({
      title: "Clear history",
      body: [
        h("label", { for: "clear-value", text: "Delete finished tasks that ended more than" }),
        h("div", { class: "fields" }, value, unit, h("span", { text: "ago" })),
        h("p", { class: "muted", text: "From memory and from the snapshot file. Pending and running tasks stay. This cannot be undone." }),
      ],
      confirm: "Delete",
      danger: true,
    });
    if (!ok) return;
    localStorage.setItem("taskflow.clearValue", value.value);
    localStorage.setItem("taskflow.clearUnit", unit.value);
    const params = new URLSearchParams({ value: value.value, unit: unit.value });
    const result = await send("DELETE", "/history?" + params.toString());
    if (!result.ok) {
      flash("error", "History not cleared: " + result.error);
      return;
    }
    const deleted = count(result.data.deleted);
    flash("ok", "History cleared: " + plural(deleted, "finished task") + " deleted.");
    // No stream event tells which records went: reload what is on screen.
    loadPage();
    if (dead.loaded) loadDead();
    if (state.selected) openDetail(state.selected);
    afterAction();
  }

  const TABS = ["tasks", "dead", "queues", "schedules", "audit", "registered"];

  function selectTab(name) {
    for (const button of document.querySelectorAll(".tabs button")) {
      const selected = button.dataset.tab === name;
      button.setAttribute("aria-selected", String(selected));
      button.tabIndex = selected ? 0 : -1;
    }
    for (const tab of TABS) $("tab-" + tab).hidden = tab !== name;
    if (name === "registered") loadRegistered();
    if (name === "dead") loadDead();
    if (name === "audit") loadAudit();
    if (name === "queues") loadQueues();
    if (name === "schedules") loadSchedules();
  }

  /* ------------------------------------------------------------ controls */

  function resetPaging() {
    state.cursors = [null];
    state.page = 0;
    state.next = null;
    loadPage();
  }

  function renderPause() {
    const button = $("pause");
    button.classList.toggle("active", state.paused);
    button.textContent = state.paused ? "Resume" + (state.newWhilePaused ? " (+" + state.newWhilePaused + " new)" : "") : "Pause";
    if (state.source && state.source.readyState === EventSource.OPEN) {
      setLive(state.paused ? "Paused" : "Live", state.paused ? "paused" : "live");
    }
  }

  function exportCsv() {
    const quote = (v) => {
      const s = v === null || v === undefined ? "" : String(v);
      return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    };
    const lines = [["ID", "Function", "Status", "Duration (ms)", "Retries", "Created", "Error"].join(",")];
    for (const t of displayedRows()) {
      const ms = t.duration === null || t.duration === undefined ? "" : (t.duration * 1000).toFixed(3);
      lines.push([t.task_id, t.func_name, t.status, ms, t.retries_used, t.created_at, t.error].map(quote).join(","));
    }
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
    const link = h("a", { href: URL.createObjectURL(blob), download: "tasks-" + new Date().toISOString().slice(0, 10) + ".csv" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  function setup() {
    document.title = config.title;
    $("logout").hidden = !config.auth;
    $("page-size").value = String(state.pageSize);

    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("search").addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        const id = $("search").value.trim();
        if (id) openDetail(id);
      }
    });
    $("status").addEventListener("change", (e) => {
      state.filters.status = e.target.value;
      resetPaging();
    });
    let nameTimer = null;
    $("name").addEventListener("input", (e) => {
      clearTimeout(nameTimer);
      nameTimer = setTimeout(() => {
        state.filters.name = e.target.value.trim();
        resetPaging();
      }, 250);
    });
    $("window").addEventListener("change", (e) => {
      state.filters.window = Number(e.target.value);
      resetPaging();
    });
    $("page-size").addEventListener("change", (e) => {
      state.pageSize = Number(e.target.value);
      localStorage.setItem("taskflow.pageSize", String(state.pageSize));
      resetPaging();
    });
    $("export").addEventListener("click", exportCsv);
    $("clear-history").addEventListener("click", clearHistory);
    let tagTimer = null;
    $("tag").addEventListener("input", (e) => {
      clearTimeout(tagTimer);
      tagTimer = setTimeout(() => {
        const value = e.target.value.trim();
        const valid = !value || value.indexOf("=") > 0;
        e.target.setAttribute("aria-invalid", String(!valid));
        e.target.title = valid ? "" : "Write the tag as key=value";
        if (!valid || value === state.filters.tag) return;
        state.filters.tag = value;
        resetPaging();
      }, 250);
    });
    $("next").addEventListener("click", () => {
      if (!state.next) return;
      state.cursors[state.page + 1] = state.next;
      state.page += 1;
      loadPage();
    });
    $("prev").addEventListener("click", () => {
      if (state.page === 0) return;
      state.page -= 1;
      loadPage();
    });
    $("first").addEventListener("click", resetPaging);
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      if (!state.paused) {
        state.newWhilePaused = 0;
        loadPage();
      }
      renderPause();
    });
    $("tasks").tHead.addEventListener("click", (e) => {
      const th = e.target.closest("th[data-sort]");
      if (!th) return;
      const key = th.dataset.sort;
      // Click: the natural direction, then the other one, then back to the server's order.
      const natural = key === "func_name" || key === "task_id" ? "asc" : "desc";
      if (!state.sort || state.sort.key !== key) state.sort = { key, dir: natural };
      else if (state.sort.dir === natural) state.sort = { key, dir: natural === "asc" ? "desc" : "asc" };
      else state.sort = null;
      render();
    });
    for (const th of document.querySelectorAll("#tasks th[data-sort]")) {
      th.tabIndex = 0;
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          th.click();
        }
      });
    }
    for (const table of [$("tasks"), $("dead")]) {
      table.tBodies[0].addEventListener("click", (e) => {
        if (e.target.closest("input, a, button, .c-check")) return;
        const tr = e.target.closest("tr[data-id]");
        if (tr) openDetail(tr.dataset.id);
      });
      table.tBodies[0].addEventListener("keydown", (e) => {
        const tr = e.target.closest("tr[data-id]");
        if (!tr || e.target !== tr) return;
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          openDetail(tr.dataset.id);
        } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
          e.preventDefault();
          const to = e.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling;
          if (to) to.focus();
        }
      });
    }

    // Dead letters.
    $("dead-filters").addEventListener("submit", (e) => e.preventDefault());
    $("dead-status").addEventListener("change", (e) => {
      dead.statuses = e.target.value.split(",");
      dead.selected.clear();
      resetDead();
    });
    $("dead").tBodies[0].addEventListener("change", (e) => {
      if (!e.target.classList.contains("pick")) return;
      const id = e.target.closest("tr[data-id]").dataset.id;
      if (e.target.checked) dead.selected.add(id);
      else dead.selected.delete(id);
      renderDead();
    });
    $("dead-all").addEventListener("change", (e) => {
      for (const t of dead.rows) {
        if (e.target.checked) dead.selected.add(t.task_id);
        else dead.selected.delete(t.task_id);
      }
      renderDead();
    });
    $("dead-retry-selected").addEventListener("click", retrySelected);
    $("dead-retry-window").addEventListener("click", retryWindow);
    $("dead-next").addEventListener("click", () => {
      if (!dead.next) return;
      dead.positions[dead.page + 1] = dead.next;
      dead.page += 1;
      loadDead();
    });
    $("dead-prev").addEventListener("click", () => {
      if (dead.page === 0) return;
      dead.page -= 1;
      loadDead();
    });
    $("dead-first").addEventListener("click", resetDead);
    $("audit-refresh").addEventListener("click", loadAudit);
    $("flash-close").addEventListener("click", () => ($("flash").hidden = true));

    // Links to a task, wherever they are (panel, dead letters, audit, messages).
    document.addEventListener("click", (e) => {
      const link = e.target.closest("a.task-link");
      if (!link) return;
      e.preventDefault();
      openDetail(link.dataset.task);
    });

    const tabs = [...document.querySelectorAll(".tabs button")];
    for (const button of tabs) {
      button.addEventListener("click", () => selectTab(button.dataset.tab));
      button.addEventListener("keydown", (e) => {
        // Arrow keys move between tabs, as in a native tab list.
        const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (!step) return;
        const to = tabs[(tabs.indexOf(button) + step + tabs.length) % tabs.length];
        to.focus();
        selectTab(to.dataset.tab);
      });
    }
    document.addEventListener("keydown", (e) => {
      // Escape in the confirmation dialog closes the dialog only.
      if (e.key === "Escape" && state.selected && !$("confirm").open) closeDetail();
    });
    setupResizer();
    window.addEventListener("resize", drawCharts);
    setInterval(drawCharts, 5000); // the time axis moves even when nothing happens
    setInterval(tickSchedules, 1000); // "in 25 s" counts down

    selectTab("tasks");
    loadRegistered();
    connect(); // the first "hello" loads the page, so no delta is missed in between
  }

  setup();
})();
