// The overview (`/`): the run form, the charts, runs (live and recorded), pipelines,
// streams, the stream view and the latest errors.

import { ChartsPanel } from "./charts-panel.js";
import { el, formatClock, formatCount, formatDuration, formatRate, preview, reconcile, rootUrl, shortId } from "./format.js";
import { progressRow, updateProgressRow } from "./progress.js";
import { buildForm } from "./schema-form.js";

const $ = (selector) => document.querySelector(selector);

export function badge(value) {
  return el("span", { className: "badge", dataset: { state: value } }, value);
}

/** The KPIs of the top bar (every view shows them). */
export function renderKpis(app) {
  const summary = app.summary;
  if (!summary) return;
  const live = summary.runs.filter((r) => r.state === "running" || r.state === "pending");
  $("#kpi-runs").textContent = String(live.length);
  $("#kpi-streams").textContent = String(summary.streams_total);
  $("#kpi-clients").textContent = String(summary.connections);
  $("#kpi-items").textContent = summary.throughput ? formatRate(summary.throughput.items) : "–";
  $("#kpi-chunks").textContent = summary.throughput ? formatRate(summary.throughput.chunks) : "–";
  const totals = summary.error_totals;
  $("#kpi-errors").textContent = formatCount(totals ? totals.total : summary.errors.length);
}

export class Overview {
  constructor(app) {
    this.app = app;
    this.pipelines = new Map();
    this.form = null;
    this.recorded = [];
    this.charts = new ChartsPanel(app);
    this.liveIds = new Set();
    $("#pipeline-select").addEventListener("change", () => this.choosePipeline());
    $("#run-form").addEventListener("submit", (event) => this.submit(event));
    app.listeners.add((summary) => this.onSummary(summary));
  }

  async start() {
    const app = this.app;
    try {
      await this.loadPipelines();
    } catch (error) {
      if (error.status === 401) return;
      this.message(`Could not list the pipelines: ${error.message}`, "error");
    }
    await this.loadRuns();
    this.charts.start(this.pipelineNames());
    const wanted = new URLSearchParams(location.search).get("stream");
    if (wanted) app.showStream(wanted);
  }

  pipelineNames() {
    return [...new Set([...this.pipelines.keys(), ...((this.app.summary && this.app.summary.pipelines) || []).map((p) => p.pipeline)])].sort();
  }

  async loadRuns() {
    try {
      const page = await this.app.api("/api/runs?limit=50");
      this.recorded = page.runs;
      $("#runs-note").textContent = page.recording ? "" : "Run history is off: finished runs are not kept.";
    } catch (error) {
      if (error.status === 403) this.recorded = [];
    }
    this.render();
  }

  onSummary(summary) {
    // a run that was live and is not any more: its record is complete, fetch the list
    const live = new Set(summary.runs.filter((r) => !r.ended_at).map((r) => r.run));
    for (const id of this.liveIds) {
      if (!live.has(id)) {
        this.loadRuns();
        break;
      }
    }
    this.liveIds = live;
  }

  reconnected() {
    this.loadRuns();
    this.charts.refresh();
  }

  streamEnded() {}

  message(text, kind = "info") {
    const node = $("#run-message");
    node.textContent = text;
    node.dataset.kind = kind;
  }

  // -- the run form ----------------------------------------------------------------------

  async loadPipelines() {
    const listing = await this.app.api("/api/pipelines");
    const select = $("#pipeline-select");
    select.replaceChildren();
    this.pipelines.clear();
    for (const pipeline of listing.pipelines) {
      this.pipelines.set(pipeline.name, pipeline);
      select.append(el("option", { value: pipeline.name }, pipeline.name));
    }
    if (listing.pipelines.length === 0) {
      select.append(el("option", { value: "" }, "no named pipeline"));
      select.disabled = true;
      $("#pipeline-description").textContent = "This server declares no pipeline this token may run (pipelines: in its configuration).";
    }
    const again = new URLSearchParams(location.search).get("pipeline");
    if (again && this.pipelines.has(again)) select.value = again;
    this.choosePipeline();
  }

  choosePipeline() {
    const pipeline = this.pipelines.get($("#pipeline-select").value);
    $("#pipeline-description").textContent = pipeline ? pipeline.description || `Sources: ${pipeline.sources.join(", ")}` : "";
    this.form = buildForm($("#params"), pipeline ? pipeline.params : null);
    this.app.updateButtons();
  }

  async submit(event) {
    event.preventDefault();
    const name = $("#pipeline-select").value;
    if (!name || !this.form) return;
    const { values, errors } = this.form.read();
    if (errors.length) {
      this.message(`Check the params: ${errors.join("; ")}`, "error");
      return;
    }
    const button = $("#run-button");
    button.disabled = true;
    this.message(`Starting ${name}…`);
    try {
      const started = await this.app.run(name, values);
      // runs before the next message: the view is ready for the run's first chunk
      this.app.showStream(started.stream, { run: started.run, subscribed: true });
      this.message(`Run ${started.run} of ${started.pipeline} started on stream ${started.stream}.`, "ok");
    } catch (error) {
      this.message(`${error.code ? `${error.code}: ` : ""}${error.message}`, "error");
    } finally {
      button.disabled = false;
      this.app.updateButtons();
    }
  }

  updateButtons() {
    $("#run-button").disabled = !this.app.live || !this.form || this.pipelines.size === 0;
    for (const button of document.querySelectorAll("#runs-table button.danger")) {
      button.disabled = !this.app.live || button.dataset.live !== "true";
    }
  }

  // -- rendering -------------------------------------------------------------------------

  render() {
    const app = this.app;
    renderKpis(app);
    this.renderRuns();
    const summary = app.summary;
    if (summary) {
      this.renderStreams(summary);
      this.renderErrors(summary);
      this.renderPipelines(summary);
    }
    this.charts.pipelines(this.pipelineNames());
    this.updateButtons();
  }

  runs() {
    const summary = this.app.summary;
    const fromFeed = (summary && summary.runs) || [];
    const seen = new Set(fromFeed.map((r) => r.run));
    const rows = [...fromFeed];
    for (const r of this.recorded) {
      if (seen.has(r.run_id)) continue;
      rows.push({
        run: r.run_id,
        pipeline: r.pipeline,
        stream: r.stream,
        state: r.state,
        started_at: r.started_at,
        ended_at: r.ended_at,
        items: r.items_in,
        progress: {},
        error: r.error,
      });
    }
    return rows;
  }

  renderRuns() {
    const app = this.app;
    const stale = app.staleSince !== null;
    const rows = this.runs();
    const empty = $("#runs-empty");
    empty.hidden = rows.length > 0;
    empty.textContent = app.feed === "denied" && !this.recorded.length ? "Not shown: this token may not see the dashboard." : "No runs yet.";
    const now = (app.summary && app.summary.time) || Date.now() / 1000;
    reconcile(
      $("#runs-table tbody"),
      rows,
      (run) => run.run,
      (run) => {
        const open = el("button", { type: "button", className: "small" }, "View");
        open.addEventListener("click", () => {
          const row = open.closest("tr");
          app.showStream(row.dataset.stream, { run: row.dataset.key });
        });
        const stop = el("button", { type: "button", className: "small danger" }, "Cancel");
        stop.addEventListener("click", () => app.cancel({ run: stop.closest("tr").dataset.key }));
        open.setAttribute("aria-label", `View the stream of run ${run.run}`);
        stop.setAttribute("aria-label", `Cancel run ${run.run}`);
        const link = el("a", { href: rootUrl(`runs/${encodeURIComponent(run.run)}`).href, title: run.run }, el("code", {}, shortId(run.run, 8)));
        return el(
          "tr",
          {},
          el("td", { dataset: { label: "Pipeline" } }, run.pipeline || "–"),
          el("td", { dataset: { label: "Run" } }, link),
          el("td", { className: "state", dataset: { label: "State" } }),
          el("td", { className: "progress-cell", dataset: { label: "Progress" } }),
          el("td", { className: "num items", dataset: { label: "Items" } }),
          el("td", { className: "started", dataset: { label: "Started" } }),
          el("td", { className: "actions-cell" }, open, " ", stop),
        );
      },
      (row, run) => {
        row.dataset.stream = run.stream;
        row.setAttribute("aria-current", run.stream === app.stream.stream ? "true" : "false");
        const going = run.state === "running" || run.state === "pending";
        const shown = stale && going ? "unknown" : run.state;
        const stateCell = row.querySelector(".state");
        if (stateCell.dataset.shown !== shown) {
          stateCell.dataset.shown = shown;
          stateCell.replaceChildren(badge(shown));
          if (shown === "unknown") stateCell.firstChild.title = `was ${run.state} when the connection dropped`;
        }
        const cell = row.querySelector(".progress-cell");
        const stages = Object.entries(run.progress || {});
        reconcile(
          cell,
          stages,
          ([stage]) => stage,
          ([stage]) => progressRow(stage),
          (node, [, p]) => updateProgressRow(node, p.done, p.total, p.message, run.state),
        );
        if (!stages.length && run.error) cell.textContent = run.error;
        row.querySelector(".items").textContent = formatCount(run.items);
        const elapsed = (run.ended_at || now) - run.started_at;
        row.querySelector(".started").textContent = run.started_at ? `${formatClock(run.started_at)} (${formatDuration(elapsed)})` : "–";
        const stop = row.querySelector(".danger");
        stop.dataset.live = going ? "true" : "false";
        stop.disabled = stale || !going;
        stop.hidden = !going;
      },
    );
  }

  renderStreams(summary) {
    const app = this.app;
    $("#streams-empty").hidden = summary.streams.length > 0;
    reconcile(
      $("#streams-table tbody"),
      summary.streams,
      (s) => s.stream,
      (s) => {
        const open = el("button", { type: "button", className: "link", title: s.stream }, s.stream);
        open.setAttribute("aria-label", `View stream ${s.stream}`);
        open.addEventListener("click", () => {
          const row = open.closest("tr");
          app.showStream(row.dataset.key, { run: row.dataset.run || null });
        });
        return el(
          "tr",
          {},
          el("td", { dataset: { label: "Stream" } }, open),
          el("td", { className: "state", dataset: { label: "State" } }),
          el("td", { className: "num clients", dataset: { label: "Clients" } }),
          el("td", { className: "num seq", dataset: { label: "Seq" } }),
          el("td", { className: "num dropped", dataset: { label: "Dropped" } }),
        );
      },
      (row, s) => {
        if (s.run) row.dataset.run = s.run;
        row.setAttribute("aria-current", s.stream === app.stream.stream ? "true" : "false");
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

  renderErrors(summary) {
    const app = this.app;
    $("#errors-empty").hidden = summary.errors.length > 0;
    reconcile(
      $("#errors-list"),
      summary.errors.slice(0, 20),
      (e) => e.id,
      (e) => errorItem(app, e),
      () => {},
    );
  }

  renderPipelines(summary) {
    const totals = summary.error_totals || { rows: [] };
    const errors = {};
    for (const row of totals.rows) errors[row.pipeline] = (errors[row.pipeline] || 0) + row.count;
    const rates = (summary.throughput && summary.throughput.by_pipeline) || {};
    reconcile(
      $("#pipelines-table tbody"),
      summary.pipelines,
      (p) => p.pipeline,
      () => el(
        "tr",
        {},
        el("td", { className: "name", dataset: { label: "Pipeline" } }),
        el("td", { className: "num running", dataset: { label: "Running" } }),
        el("td", { className: "num succeeded", dataset: { label: "Succeeded" } }),
        el("td", { className: "num failed", dataset: { label: "Failed" } }),
        el("td", { className: "num cancelled", dataset: { label: "Cancelled" } }),
        el("td", { className: "num rate", dataset: { label: "Items/s" } }),
        el("td", { className: "num errors", dataset: { label: "Errors" } }),
      ),
      (row, p) => {
        row.querySelector(".name").textContent = p.pipeline;
        row.querySelector(".running").textContent = formatCount(p.running || 0);
        for (const key of ["succeeded", "failed", "cancelled"]) {
          row.querySelector(`.${key}`).textContent = formatCount((p.runs && p.runs[key]) || 0);
        }
        row.querySelector(".rate").textContent = formatRate(rates[p.pipeline] || 0);
        row.querySelector(".errors").textContent = formatCount(errors[p.pipeline] || 0);
      },
    );
  }
}

/** One error of the feed as a list item (overview and errors view). */
export function errorItem(app, e) {
  const where = [formatClock(e.time), e.pipeline, e.stage, e.handled ? "handled" : "fatal"].filter(Boolean).join(" · ");
  const item = el(
    "li",
    { dataset: { stream: e.stream, handled: e.handled ? "true" : "false" } },
    el("div", { className: "what" }, e.error),
    el("div", { className: "text" }, preview(e.message, 400)),
    el("div", { className: "where" }, `${where} · stream `, el("code", {}, e.stream), " "),
  );
  const whereBox = item.querySelector(".where");
  if (e.run) {
    whereBox.append(el("a", { href: rootUrl(`runs/${encodeURIComponent(e.run)}`).href, className: "small-link" }, "Run page"), " ");
  }
  if (document.body.dataset.view === "overview") {
    const open = el("button", { type: "button", className: "small" }, "View");
    open.setAttribute("aria-label", `View stream ${e.stream}`);
    open.addEventListener("click", () => app.showStream(e.stream, { run: e.run || null }));
    whereBox.append(open);
  }
  return item;
}
