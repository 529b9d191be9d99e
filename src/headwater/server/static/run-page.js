// The page of one run (`/runs/ID`): what it was started with, its pipeline drawn with
// live counters, its stages, the fatal error on top, its handled errors grouped by stage
// and type, and its stream (live, or replayed from the run history once it ended).

import { el, formatClock, formatCount, formatDuration, reconcile, rootUrl, valueText } from "./format.js";
import { PipelineGraph, queueClass } from "./graph.js";
import { badge, renderKpis } from "./overview.js";

const $ = (selector) => document.querySelector(selector);

export class RunPage {
  constructor(app, runId) {
    this.app = app;
    this.runId = runId;
    this.record = null;
    this.graph = new PipelineGraph($("#rp-graph"));
    $("#run-stream-slot").append($("#stream-view"));
    $("#rp-id").textContent = runId;
    document.title = `Run ${runId} · headwater`;
    $("#rp-again").addEventListener("click", () => this.runAgain());
    $("#rp-cancel").addEventListener("click", () => app.cancel({ run: this.runId }));
    app.listeners.add((summary) => this.onSummary(summary));
  }

  async start() {
    await this.load();
    if (this.record) this.app.showStream(this.record.stream, { run: this.runId });
  }

  async load() {
    try {
      this.record = await this.app.api(`/api/runs/${encodeURIComponent(this.runId)}`);
    } catch (error) {
      if (error.status === 401) return;
      $("#rp-state").replaceWith(Object.assign(badge(error.status === 404 ? "not found" : "error"), { id: "rp-state" }));
      this.message(error.status === 404
        ? "No such run: it never ran on this server, its record was pruned by the retention, or this token may not see it."
        : `Could not load the run: ${error.message}`, "error");
      return;
    }
    this.draw();
  }

  draw() {
    const r = this.record;
    const stateBadge = badge(r.state);
    stateBadge.id = "rp-state";
    $("#rp-state").replaceWith(stateBadge);
    const facts = [
      ["Pipeline", r.pipeline],
      ["Stream", r.stream],
      ["Started by", r.owner || "anonymous"],
      ["Started", formatClock(r.started_at)],
      ["Ended", r.ended_at ? formatClock(r.ended_at) : "—"],
      ["Duration", formatDuration((r.ended_at || Date.now() / 1000) - r.started_at)],
      ["Items", formatCount(r.items_in)],
      ["Chunks kept", `${formatCount(r.chunks_kept)} of ${formatCount(r.last_seq)}`],
    ];
    if (r.origin) facts.push(["Origin", r.job ? `${r.origin}, job ${r.job}` : r.origin]);
    if (r.cancel_reason) facts.push(["Cancelled", r.cancel_reason]);
    $("#rp-facts").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
    $("#rp-events").href = rootUrl(`api/streams/${encodeURIComponent(r.stream)}/events?since=0`).href;
    const fatal = r.fatal;
    $("#rp-fatal").hidden = !fatal;
    if (fatal) {
      $("#rp-fatal-type").textContent = fatal.error;
      $("#rp-fatal-stage").textContent = fatal.stage || "the run";
      $("#rp-fatal-message").textContent = fatal.message;
      $("#rp-fatal-traceback").textContent = fatal.traceback || "";
    }
    const params = Object.entries(r.params || {});
    $("#rp-params-empty").hidden = params.length > 0;
    $("#rp-params tbody").replaceChildren(...params.map(([k, v]) => el("tr", {},
      el("td", { dataset: { label: "Param" } }, el("code", {}, k)),
      el("td", { dataset: { label: "Value" } }, el("code", {}, valueText(v))))));
    this.graph.draw(r.graph || {}, this.counters());
    this.renderStages();
    this.renderHandled(r.handled || []);
    this.updateButtons();
  }

  /** Counters per stage: the live feed's while the run goes on, else the record's. */
  counters() {
    const r = this.record;
    const live = this.liveRun();
    if (live && live.stages) return live.stages;
    const out = {};
    for (const [stage, s] of Object.entries(r.stages || {})) {
      out[stage] = { in: s.items_in, out: s.items_out, errors: s.errors, skipped: s.skipped, queue: (r.queue_depth || {})[stage] || 0 };
    }
    return out;
  }

  liveRun() {
    const summary = this.app.summary;
    if (!summary || this.app.staleSince !== null) return null;
    return summary.runs.find((x) => x.run === this.runId && !x.ended_at) || null;
  }

  stageList() {
    const g = (this.record && this.record.graph) || {};
    const list = [...(g.sources || []), ...(g.steps || []), ...(g.sinks || [])];
    if (g.dead_letter) list.push({ stage: g.dead_letter, component: "dead letter" });
    const known = new Set(list.map((s) => s.stage));
    for (const stage of Object.keys(this.counters())) if (!known.has(stage)) list.push({ stage, component: "" });
    return list;
  }

  renderStages() {
    const counters = this.counters();
    reconcile(
      $("#rp-stages tbody"),
      this.stageList(),
      (s) => s.stage,
      (s) => el("tr", {},
        el("td", { dataset: { label: "Stage" } }, el("code", {}, s.stage)),
        el("td", { dataset: { label: "Component" } }, s.component),
        el("td", { className: "num in", dataset: { label: "In" } }),
        el("td", { className: "num out", dataset: { label: "Out" } }),
        el("td", { className: "num errors", dataset: { label: "Errors" } }),
        el("td", { className: "num skipped", dataset: { label: "Skipped" } }),
        el("td", { className: "num queue", dataset: { label: "Queue" } })),
      (row, s) => {
        const c = counters[s.stage] || {};
        row.querySelector(".in").textContent = formatCount(c.in);
        row.querySelector(".out").textContent = formatCount(c.out);
        row.querySelector(".errors").textContent = formatCount(c.errors || 0);
        row.querySelector(".skipped").textContent = formatCount(c.skipped || 0);
        const q = row.querySelector(".queue");
        q.textContent = formatCount(c.queue || 0);
        q.className = `num queue ${queueClass(c.queue || 0)}`;
      },
    );
  }

  renderHandled(handled) {
    $("#rp-handled-empty").hidden = handled.length > 0;
    $("#rp-handled tbody").replaceChildren(...handled.map((h) => el("tr", {},
      el("td", { dataset: { label: "Stage" } }, el("code", {}, h.stage)),
      el("td", { dataset: { label: "Type" } }, h.error),
      el("td", { className: "num", dataset: { label: "Count" } }, formatCount(h.count)),
      el("td", { className: "text", dataset: { label: "Last message" } }, h.message || ""))));
  }

  onSummary() {
    if (!this.record) return;
    const live = this.liveRun();
    if (live) {
      this.sawLive = true;
      if (this.record.state !== live.state) {
        this.record.state = live.state;
        const b = badge(live.state);
        b.id = "rp-state";
        $("#rp-state").replaceWith(b);
      }
    } else if (this.record.live && this.sawLive) {
      this.sawLive = false;
      setTimeout(() => this.load(), 300); // it ended: read the final record
    }
  }

  render() {
    renderKpis(this.app);
    if (!this.record) return;
    this.graph.update(this.counters());
    this.renderStages();
    this.updateButtons();
  }

  reconnected() {
    this.load();
  }

  streamEnded() {
    if (this.record && this.record.live) setTimeout(() => this.load(), 300);
  }

  message(text, kind = "info") {
    const node = $("#rp-message");
    node.textContent = text;
    node.dataset.kind = kind;
  }

  updateButtons() {
    const r = this.record;
    const live = this.app.live;
    const again = $("#rp-again");
    again.disabled = !live || !r || !r.can_run_again;
    again.title = r && r.run_again_blocked ? r.run_again_blocked : "";
    $("#rp-again-why").textContent = live && r && r.run_again_blocked ? r.run_again_blocked : "";
    $("#rp-cancel").disabled = !live || !r || !(r.state === "running" || r.state === "pending");
  }

  async runAgain() {
    const r = this.record;
    $("#rp-again").disabled = true;
    try {
      const started = await this.app.run(r.pipeline, r.params || {});
      location.assign(rootUrl(`runs/${encodeURIComponent(started.run)}`).href);
    } catch (error) {
      this.message(`${error.code ? `${error.code}: ` : ""}${error.message}`, "error");
      this.updateButtons();
    }
  }
}
