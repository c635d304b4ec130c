/* fastapi-taskflow dashboard: plain JavaScript, no build step, no network fetch beyond this app.
 *
 * The table shows one page of the server's list (GET {base}?status&name&limit&cursor), and is
 * kept current by the numbered deltas of GET {base}/dashboard/stream. Each delta carries the
 * whole record (without its logs), so applying it is an upsert, and applying one twice is
 * harmless; the browser's EventSource resumes after the last id it saw.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("taskflow-config").textContent);
  const base = location.pathname.replace(/\/dashboard\/?$/, "");
  const STATUSES = ["pending", "running", "success", "failed", "interrupted", "cancelled", "rejected"];
  const CHART_SECONDS = 300;

  const state = {
    rows: [],
    cursors: [null], // cursor of each page visited; page i is fetched with cursors[i]
    page: 0,
    next: null,
    pageSize: Number(localStorage.getItem("taskflow.pageSize")) || 30,
    filters: { status: "", name: "", window: 0 },
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
    const d = new Date(iso);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (sameDay && !withDate) return time;
    return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" }) + " " + time;
  }

  function fmtCount(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString();
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
        { "data-id": task.task_id, "data-status": task.status, class: task.task_id === state.selected ? "selected" : null },
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
    applyRecord(task, event.type === "created");
    if (state.detail && task.task_id === state.selected) {
      state.detail = Object.assign({}, task, { logs: state.detail.logs });
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
    if (state.selected) openDetail(state.selected);
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
      if (state.selected === taskId) closeDetail();
      notice("No task with id " + taskId);
      return;
    }
    if (!response.ok || state.selected !== taskId) return;
    state.detail = await response.json();
    $("panel").hidden = false;
    renderDetail();
    scheduleRender();
  }

  function closeDetail() {
    state.selected = null;
    state.detail = null;
    $("panel").hidden = true;
    scheduleRender();
  }

  async function loadArguments(taskId) {
    try {
      const response = await api("/dashboard/arguments/" + encodeURIComponent(taskId));
      if (!response.ok || state.selected !== taskId) return;
      const data = await response.json();
      const text = data.stored
        ? "args: " + JSON.stringify(data.args) + "\nkwargs: " + JSON.stringify(data.kwargs)
        : "Not stored: only tasks registered with persist=True keep their arguments.";
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
    const parts = [
      h(
        "div",
        { class: "panel-head" },
        h("h2", { text: t.func_name, title: t.func_name }),
        h("span", { class: "badge " + t.status, id: "detail-status", text: t.status }),
        h("button", { type: "button", class: "icon", id: "detail-close", text: "Close", onclick: closeDetail }),
      ),
      h("div", { class: "idline" }, h("code", { id: "detail-id", text: t.task_id }), copy),
      h("h3", { text: "Timings" }),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])),
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

  function renderRegistered() {
    const byName = (state.metrics && state.metrics.by_name) || {};
    const rows = state.registered.map((r) => {
      const s = byName[r.name];
      const link = h("a", { href: "#", text: r.name, title: "Show the tasks of " + r.name });
      link.addEventListener("click", (e) => {
        e.preventDefault();
        $("name").value = r.name;
        state.filters.name = r.name;
        selectTab("tasks");
        resetPaging();
      });
      return h(
        "tr",
        {},
        h("td", { class: "fn" }, link),
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

  function selectTab(name) {
    for (const button of document.querySelectorAll(".tabs button")) {
      button.setAttribute("aria-selected", String(button.dataset.tab === name));
    }
    $("tab-tasks").hidden = name !== "tasks";
    $("tab-registered").hidden = name !== "registered";
    if (name === "registered") loadRegistered();
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
    $("tasks").tBodies[0].addEventListener("click", (e) => {
      const tr = e.target.closest("tr[data-id]");
      if (tr) openDetail(tr.dataset.id);
    });
    for (const button of document.querySelectorAll(".tabs button")) {
      button.addEventListener("click", () => selectTab(button.dataset.tab));
    }
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.selected) closeDetail();
    });
    setupResizer();
    window.addEventListener("resize", drawCharts);
    setInterval(drawCharts, 5000); // the time axis moves even when nothing happens

    loadRegistered();
    connect(); // the first "hello" loads the page, so no delta is missed in between
  }

  setup();
})();
