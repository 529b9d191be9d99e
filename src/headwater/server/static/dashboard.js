// headwater dashboard: everything live over one WebSocket (protocol v1).
//
// * the `$dashboard` stream brings a summary of the server every ~500 ms: runs with
//   their progress, streams, throughput, latency, recent errors;
// * the stream view subscribes to one stream and renders its chunks as they arrive;
// * the run form is generated from the JSON Schema of the named pipelines' params
//   (`/api/pipelines`) and sends `run`; `cancel` stops a run.
// HTTP is used once at start (version, pipelines, the charts' recent history), never
// polled. No request leaves this server: no CDN, no font, no analytics.

import { LineChart } from "./chart.js";
import { Connection, rememberToken, socketUrl } from "./connection.js";
import {
  el,
  formatAxis,
  formatClock,
  formatCount,
  formatDuration,
  formatMillis,
  formatRate,
  preview,
  reconcile,
  shortId,
} from "./format.js";
import { progressRow, updateProgressRow } from "./progress.js";
import { buildForm } from "./schema-form.js";
import { StreamView } from "./stream-view.js";

const FEED = "$dashboard";
const MAX_ROWS = 500;
const CHART_POINTS = 120;
const TOKEN_KEY = "headwater-token";

const $ = (selector) => document.querySelector(selector);

const state = {
  token: readToken(),
  pipelines: new Map(),
  form: null,
  summary: null,
  renderScheduled: false,
  viewSubscribed: false,
  feed: "off", // off | subscribing | live | denied
  nextCancel: 0,
};

const view = new StreamView($("#stream-view"), { maxRows: MAX_ROWS });

const throughputChart = new LineChart($("#throughput-chart"), {
  title: "Throughput per second",
  series: [
    { label: "items/s", color: "--series-1" },
    { label: "chunks/s", color: "--series-2" },
  ],
  format: formatRate,
  axis: formatAxis,
  capacity: CHART_POINTS,
  legend: $("#throughput-legend"),
});

const latencyChart = new LineChart($("#latency-chart"), {
  title: "End-to-end latency",
  series: [
    { label: "p50", color: "--series-1" },
    { label: "p99", color: "--series-3" },
  ],
  format: formatMillis,
  capacity: CHART_POINTS,
  legend: $("#latency-legend"),
});

const connection = new Connection({
  url: () => socketUrl(state.token),
  onMessage,
  onState: setConnectionState,
  onOpen: resubscribe,
});

// -- start ---------------------------------------------------------------------------

function readToken() {
  try {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
    if (fromHash) {
      sessionStorage.setItem(TOKEN_KEY, fromHash);
      history.replaceState(null, "", location.pathname + location.search);
      return fromHash;
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  // relative to the page: the server may be mounted under a prefix (`/hw/api/...`)
  const url = new URL(path.replace(/^\//, ""), document.baseURI);
  const response = await fetch(url, { headers, cache: "no-store" });
  if (response.status === 401) {
    showAuth();
    throw new HttpError(401, "authentication required");
  }
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON
    }
    throw new HttpError(response.status, message);
  }
  return response.json();
}

function showAuth() {
  const form = $("#auth");
  if (!form.hidden) return;
  form.hidden = false;
  $("#auth-token").focus();
}

$("#auth").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#auth-token").value.trim();
  try {
    sessionStorage.setItem(TOKEN_KEY, state.token);
  } catch {
    // storage unavailable: the token lives in this page only
  }
  $("#auth").hidden = true;
  start();
});

async function start() {
  rememberToken(state.token);
  try {
    const health = await api("/healthz");
    $("#version").textContent = `v${health.version}`;
  } catch {
    // the version is cosmetic
  }
  try {
    await loadPipelines();
  } catch (error) {
    if (error.status === 401) return;
    setRunMessage(`Could not list the pipelines: ${error.message}`, "error");
  }
  try {
    const history = await api("/api/dashboard");
    for (const point of history.points || []) addPoint(point);
    if (history.summary) {
      state.summary = history.summary;
      scheduleRender();
    }
  } catch (error) {
    if (error.status === 401) return;
    if (error.status === 403) feedDenied();
  }
  connection.connect();
}

function setConnectionState(value) {
  const pill = $("#conn");
  pill.dataset.state = value;
  pill.textContent = { connecting: "connecting…", open: "live", closed: "disconnected: retrying" }[value] || value;
  if (value !== "open") {
    state.viewSubscribed = false;
    if (state.feed !== "denied") state.feed = "off";
  }
  updateButtons();
}

async function resubscribe() {
  if (state.feed !== "denied") subscribeFeed();
  if (view.stream && !view.complete) {
    const request = { type: "subscribe", stream: view.stream };
    if (view.epoch !== null) {
      request.since = view.lastSeq;
      request.epoch = view.epoch;
    } else {
      request.since = 0;
    }
    try {
      await connection.request(request);
      state.viewSubscribed = true;
    } catch (error) {
      view.unavailable(error.code || "error", error.message);
    }
    updateButtons();
  }
}

async function subscribeFeed() {
  state.feed = "subscribing";
  try {
    await connection.request({ type: "subscribe", stream: FEED });
    state.feed = "live";
  } catch (error) {
    if (error.code === "unauthorized") {
      feedDenied();
      return;
    }
    state.feed = "off";
    if (connection.open) setTimeout(() => connection.open && state.feed === "off" && subscribeFeed(), 2000);
  }
}

function feedDenied() {
  state.feed = "denied";
  for (const canvas of [$("#throughput-chart"), $("#latency-chart")]) {
    canvas.setAttribute("aria-label", "Not authorised to see the live feed ($dashboard)");
  }
  setRunMessage("This token may not see the live feed ($dashboard): charts and tables stay empty.", "error");
}

// -- messages ------------------------------------------------------------------------

function onMessage(message) {
  const stream = message.stream;
  if (stream === FEED) {
    feedMessage(message);
  } else if (stream !== undefined && stream === view.stream && message.type !== "run_started") {
    viewMessage(message);
  } else if (message.type === "error" && typeof message.ref === "string" && message.ref.startsWith("cancel-")) {
    setRunMessage(`Cancel failed: ${message.code}: ${message.message}`, "error");
  }
}

function feedMessage(message) {
  switch (message.type) {
    case "stream_update":
      state.summary = message.data;
      addPoint({
        time: message.data.time,
        items: message.data.throughput.items,
        chunks: message.data.throughput.chunks,
        p50: message.data.latency.p50,
        p99: message.data.latency.p99,
      });
      scheduleRender();
      break;
    case "stream_complete":
      // the feed closes when idle or at shutdown; subscribing again reopens it
      state.feed = "off";
      if (message.reason !== "shutdown" && connection.open) setTimeout(subscribeFeed, 500);
      break;
    default:
      break;
  }
}

function viewMessage(message) {
  switch (message.type) {
    case "stream_update":
      view.chunk(message);
      break;
    case "subscribed":
      view.subscribed(message);
      break;
    case "progress":
      view.progress(message);
      break;
    case "dropped":
      view.droppedMessages(message);
      break;
    case "stream_error":
      view.note(`${message.error.error || "error"}: ${message.error.message || ""}`);
      break;
    case "stream_complete":
      view.completed(message);
      state.viewSubscribed = false;
      updateButtons();
      break;
    case "unsubscribed":
      view.detached();
      state.viewSubscribed = false;
      updateButtons();
      break;
    default:
      break;
  }
}

function addPoint(point) {
  throughputChart.push(point.time, [point.items, point.chunks]);
  const ms = (seconds) => (seconds === null || seconds === undefined ? null : seconds * 1000);
  latencyChart.push(point.time, [ms(point.p50), ms(point.p99)]);
}

// -- the stream view -----------------------------------------------------------------

async function showStream(stream, { run = null, subscribed = false } = {}) {
  if (view.stream === stream && (state.viewSubscribed || subscribed || view.complete)) return;
  const previous = view.stream;
  if (previous && previous !== stream && state.viewSubscribed && !view.complete) {
    connection.send({ type: "unsubscribe", stream: previous });
  }
  view.reset(stream, { run: run || runOfStream(stream) });
  state.viewSubscribed = subscribed;
  scheduleRender();
  updateButtons();
  if (subscribed) return;
  try {
    await connection.request({ type: "subscribe", stream, since: 0 });
    if (view.stream === stream) state.viewSubscribed = true;
  } catch (error) {
    if (view.stream === stream) view.unavailable(error.code || "error", error.message);
  }
  updateButtons();
}

function runOfStream(stream) {
  const runs = (state.summary && state.summary.runs) || [];
  const run = runs.find((r) => r.stream === stream);
  return run ? run.run : null;
}

$("#sv-unsubscribe").addEventListener("click", () => {
  if (view.stream && state.viewSubscribed) connection.send({ type: "unsubscribe", stream: view.stream });
});

// -- the run form --------------------------------------------------------------------

async function loadPipelines() {
  const listing = await api("/api/pipelines");
  const select = $("#pipeline-select");
  select.replaceChildren();
  state.pipelines.clear();
  for (const pipeline of listing.pipelines) {
    state.pipelines.set(pipeline.name, pipeline);
    select.append(el("option", { value: pipeline.name }, pipeline.name));
  }
  if (listing.pipelines.length === 0) {
    select.append(el("option", { value: "" }, "no named pipeline"));
    select.disabled = true;
    $("#pipeline-description").textContent =
      "This server declares no pipeline clients may run (pipelines: in its configuration).";
  }
  choosePipeline();
}

function choosePipeline() {
  const pipeline = state.pipelines.get($("#pipeline-select").value);
  $("#pipeline-description").textContent = pipeline ? pipeline.description || `Sources: ${pipeline.sources.join(", ")}` : "";
  state.form = buildForm($("#params"), pipeline ? pipeline.params : null);
  updateButtons();
}

$("#pipeline-select").addEventListener("change", choosePipeline);

$("#run-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("#pipeline-select").value;
  if (!name || !state.form) return;
  const { values, errors } = state.form.read();
  if (errors.length) {
    setRunMessage(`Check the params: ${errors.join("; ")}`, "error");
    return;
  }
  const button = $("#run-button");
  button.disabled = true;
  setRunMessage(`Starting ${name}…`);
  try {
    const started = await connection.request({ type: "run", pipeline: name, params: values });
    // runs before the next message: the view is ready for the run's first chunk
    showStream(started.stream, { run: started.run, subscribed: true });
    setRunMessage(`Run ${started.run} of ${started.pipeline} started on stream ${started.stream}.`, "ok");
  } catch (error) {
    setRunMessage(`${error.code ? `${error.code}: ` : ""}${error.message}`, "error");
  } finally {
    button.disabled = false;
    updateButtons();
  }
});

function cancel(target) {
  const id = `cancel-${++state.nextCancel}`;
  if (!connection.send({ type: "cancel", id, ...target })) setRunMessage("Not connected.", "error");
}

$("#cancel-button").addEventListener("click", () => {
  if (view.stream) cancel({ stream: view.stream });
});

function setRunMessage(text, kind = "info") {
  const node = $("#run-message");
  node.textContent = text;
  node.dataset.kind = kind;
}

function updateButtons() {
  $("#run-button").disabled = !connection.open || !state.form || state.pipelines.size === 0;
  $("#cancel-button").disabled = !connection.open || !view.stream || !view.run || view.complete;
  $("#sv-unsubscribe").disabled = !state.viewSubscribed || view.complete;
}

// -- rendering the summary -----------------------------------------------------------

function scheduleRender() {
  if (state.renderScheduled) return;
  state.renderScheduled = true;
  requestAnimationFrame(() => {
    state.renderScheduled = false;
    render();
  });
}

function badge(value) {
  return el("span", { className: "badge", dataset: { state: value } }, value);
}

function render() {
  const summary = state.summary;
  if (!summary) return;
  const live = summary.runs.filter((r) => r.state === "running" || r.state === "pending");
  $("#kpi-runs").textContent = String(live.length);
  $("#kpi-streams").textContent = String(summary.streams_total);
  $("#kpi-clients").textContent = String(summary.connections);
  $("#kpi-items").textContent = summary.throughput ? formatRate(summary.throughput.items) : "–";
  $("#kpi-chunks").textContent = summary.throughput ? formatRate(summary.throughput.chunks) : "–";
  $("#kpi-errors").textContent = String(summary.errors.length);
  renderRuns(summary);
  renderStreams(summary);
  renderErrors(summary);
  renderPipelines(summary);
}

function renderRuns(summary) {
  const body = $("#runs-table tbody");
  $("#runs-empty").hidden = summary.runs.length > 0;
  reconcile(
    body,
    summary.runs,
    (run) => run.run,
    (run) => {
      const open = el("button", { type: "button", className: "small" }, "View");
      open.addEventListener("click", () => {
        const row = open.closest("tr");
        showStream(row.dataset.stream, { run: row.dataset.key });
      });
      const stop = el("button", { type: "button", className: "small danger" }, "Cancel");
      stop.addEventListener("click", () => cancel({ run: stop.closest("tr").dataset.key }));
      open.setAttribute("aria-label", `View the stream of run ${run.run}`);
      stop.setAttribute("aria-label", `Cancel run ${run.run}`);
      return el(
        "tr",
        {},
        el("td", {}, run.pipeline || "–"),
        el("td", {}, el("code", { title: run.run }, shortId(run.run, 8))),
        el("td", { className: "state" }),
        el("td", { className: "progress-cell" }),
        el("td", { className: "num items" }),
        el("td", { className: "started" }),
        el("td", { className: "actions-cell" }, open, " ", stop),
      );
    },
    (row, run) => {
      row.dataset.stream = run.stream;
      row.setAttribute("aria-current", run.stream === view.stream ? "true" : "false");
      const stateCell = row.querySelector(".state");
      if (stateCell.textContent !== run.state) stateCell.replaceChildren(badge(run.state));
      const cell = row.querySelector(".progress-cell");
      const stages = Object.entries(run.progress || {});
      reconcile(
        cell,
        stages,
        ([stage]) => stage,
        ([stage]) => progressRow(stage),
        (node, [, p]) => updateProgressRow(node, p.done, p.total, p.message),
      );
      row.querySelector(".items").textContent = formatCount(run.items);
      const elapsed = (run.ended_at || summary.time) - run.started_at;
      row.querySelector(".started").textContent = run.started_at
        ? `${formatClock(run.started_at)} (${formatDuration(elapsed)})`
        : "–";
      const stop = row.querySelector(".danger");
      stop.disabled = !(run.state === "running" || run.state === "pending");
    },
  );
}

function renderStreams(summary) {
  const body = $("#streams-table tbody");
  $("#streams-empty").hidden = summary.streams.length > 0;
  reconcile(
    body,
    summary.streams,
    (s) => s.stream,
    (s) => {
      const open = el("button", { type: "button", className: "link", title: s.stream }, s.stream);
      open.setAttribute("aria-label", `View stream ${s.stream}`);
      open.addEventListener("click", () => showStream(open.closest("tr").dataset.key));
      return el(
        "tr",
        {},
        el("td", {}, open),
        el("td", { className: "state" }),
        el("td", { className: "num clients" }),
        el("td", { className: "num seq" }),
        el("td", { className: "num dropped" }),
      );
    },
    (row, s) => {
      row.setAttribute("aria-current", s.stream === view.stream ? "true" : "false");
      const stateCell = row.querySelector(".state");
      if (stateCell.textContent !== s.state) stateCell.replaceChildren(badge(s.state));
      row.querySelector(".clients").textContent = formatCount(s.clients);
      row.querySelector(".seq").textContent = formatCount(s.seq);
      row.querySelector(".dropped").textContent = formatCount(s.dropped);
    },
  );
  if (summary.streams_total > summary.streams.length) {
    $("#streams-empty").hidden = false;
    $("#streams-empty").textContent = `… and ${summary.streams_total - summary.streams.length} more`;
  } else {
    $("#streams-empty").textContent = "No open stream.";
  }
}

function renderErrors(summary) {
  const list = $("#errors-list");
  $("#errors-empty").hidden = summary.errors.length > 0;
  reconcile(
    list,
    summary.errors,
    (e) => e.id,
    (e) => {
      const where = [formatClock(e.time), e.pipeline, e.stage, e.handled ? "handled" : null].filter(Boolean).join(" · ");
      const item = el(
        "li",
        { dataset: { stream: e.stream } },
        el("div", { className: "what" }, e.error),
        el("div", { className: "text" }, preview(e.message, 400)),
        el("div", { className: "where" }, `${where} · stream `, el("code", {}, e.stream), " "),
      );
      const open = el("button", { type: "button", className: "small" }, "View");
      open.setAttribute("aria-label", `View stream ${e.stream}`);
      open.addEventListener("click", () => showStream(e.stream));
      item.querySelector(".where").append(open);
      return item;
    },
    () => {},
  );
}

function renderPipelines(summary) {
  reconcile(
    $("#pipelines-table tbody"),
    summary.pipelines,
    (p) => p.pipeline,
    () => el(
      "tr",
      {},
      el("td", { className: "name" }),
      el("td", { className: "num running" }),
      el("td", { className: "num succeeded" }),
      el("td", { className: "num failed" }),
      el("td", { className: "num cancelled" }),
    ),
    (row, p) => {
      row.querySelector(".name").textContent = p.pipeline;
      row.querySelector(".running").textContent = formatCount(p.running || 0);
      for (const key of ["succeeded", "failed", "cancelled"]) {
        row.querySelector(`.${key}`).textContent = formatCount((p.runs && p.runs[key]) || 0);
      }
    },
  );
}

window.addEventListener("pagehide", () => connection.stop());
updateButtons();
start();
