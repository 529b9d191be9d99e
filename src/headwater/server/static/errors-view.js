// The errors view (`/errors`): the totals of the server's metrics (fatal and handled
// apart, dead-lettered and skipped items), counts by pipeline, stage and type, the
// failed runs the history recorded, and the latest handled errors; filtered by
// pipeline, stage, type and run (the filters live in the URL's query, so a filtered view
// can be linked to).

import { el, formatClock, formatCount, reconcile, rootUrl } from "./format.js";
import { errorItem, renderKpis } from "./overview.js";

const $ = (selector) => document.querySelector(selector);
const FILTERS = { pipeline: "#ev-pipeline", stage: "#ev-stage", type: "#ev-type", run: "#ev-run" };

export class ErrorsView {
  constructor(app) {
    this.app = app;
    this.failed = [];
    this.recent = new Map(); // handled errors seen since the page opened, by id
    const query = new URLSearchParams(location.search);
    this.filters = Object.fromEntries(Object.keys(FILTERS).map((k) => [k, query.get(k) || ""]));
    $("#ev-run").value = this.filters.run;
    for (const [key, selector] of Object.entries(FILTERS)) {
      $(selector).addEventListener(key === "run" ? "input" : "change", () => {
        this.filters[key] = $(selector).value.trim();
        const params = new URLSearchParams(Object.entries(this.filters).filter(([, v]) => v));
        history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
        this.render();
        if (key === "pipeline") this.loadFailed();
      });
    }
    $("#ev-filters").addEventListener("submit", (e) => e.preventDefault());
  }

  async start() {
    await this.loadFailed();
  }

  async loadFailed() {
    const query = new URLSearchParams({ state: "failed", limit: "50" });
    if (this.filters.pipeline) query.set("pipeline", this.filters.pipeline);
    try {
      this.failed = (await this.app.api(`/api/runs?${query}`)).runs;
    } catch {
      this.failed = [];
    }
    this.render();
  }

  reconnected() {
    this.loadFailed();
  }

  streamEnded() {}

  message() {}

  updateButtons() {}

  matches(row) {
    const f = this.filters;
    return (!f.pipeline || row.pipeline === f.pipeline) && (!f.stage || row.stage === f.stage) && (!f.type || row.error === f.type);
  }

  options(selector, values, chosen) {
    const select = $(selector);
    const list = [...new Set(values)].filter(Boolean).sort();
    if (chosen && !list.includes(chosen)) list.unshift(chosen);
    const text = list.join("\n");
    if (select.dataset.options === text) return;
    select.dataset.options = text;
    select.replaceChildren(el("option", { value: "" }, "any"), ...list.map((v) => el("option", { value: v }, v)));
    select.value = chosen;
  }

  render() {
    const app = this.app;
    renderKpis(app);
    const summary = app.summary;
    const totals = (summary && summary.error_totals) || null;
    const rows = totals ? totals.rows : [];
    this.options("#ev-pipeline", [...rows.map((r) => r.pipeline), ...this.failed.map((r) => r.pipeline)], this.filters.pipeline);
    this.options("#ev-stage", rows.filter((r) => !this.filters.pipeline || r.pipeline === this.filters.pipeline).map((r) => r.stage), this.filters.stage);
    this.options("#ev-type", rows.map((r) => r.error), this.filters.type);
    const shown = rows.filter((r) => this.matches(r));
    const sum = (key) => shown.reduce((n, r) => n + r[key], 0);
    const filtered = Object.values(this.filters).some(Boolean);
    if (totals) {
      $("#ev-total").textContent = formatCount(filtered ? sum("count") : totals.total);
      $("#ev-fatal").textContent = formatCount(filtered ? sum("fatal") : totals.fatal);
      $("#ev-handled").textContent = formatCount(filtered ? sum("handled") : totals.handled);
      const byPipeline = (map) => Object.entries(map || {}).filter(([p]) => !this.filters.pipeline || p === this.filters.pipeline).reduce((n, [, v]) => n + v, 0);
      $("#ev-dead").textContent = formatCount(byPipeline(totals.dead_letter));
      $("#ev-skipped").textContent = formatCount(byPipeline(totals.skipped));
      $("#ev-total").dataset.total = String(totals.total);
    }
    $("#ev-counts-empty").hidden = shown.length > 0;
    $("#ev-counts-empty").textContent = app.feed === "denied" ? "Not shown: this token may not see the dashboard." : "No errors counted.";
    reconcile(
      $("#ev-counts tbody"),
      shown,
      (r) => `${r.pipeline}\u0000${r.stage}\u0000${r.error}`,
      () => el("tr", {},
        el("td", { className: "p", dataset: { label: "Pipeline" } }),
        el("td", { className: "s", dataset: { label: "Stage" } }),
        el("td", { className: "t", dataset: { label: "Type" } }),
        el("td", { className: "num fatal", dataset: { label: "Fatal" } }),
        el("td", { className: "num handled", dataset: { label: "Handled" } }),
        el("td", { className: "num count", dataset: { label: "Total" } })),
      (tr, r) => {
        tr.querySelector(".p").textContent = r.pipeline;
        tr.querySelector(".s").textContent = r.stage;
        tr.querySelector(".t").textContent = r.error;
        tr.querySelector(".fatal").textContent = formatCount(r.fatal);
        tr.querySelector(".handled").textContent = formatCount(r.handled);
        tr.querySelector(".count").textContent = formatCount(r.count);
      },
    );
    this.renderFailed();
    this.renderRecent(summary);
  }

  renderFailed() {
    const f = this.filters;
    const runs = this.failed.filter((r) => (!f.run || r.run_id.startsWith(f.run)) && (!f.stage || r.error_stage === f.stage) && (!f.type || r.error === f.type));
    $("#ev-fatal-empty").hidden = runs.length > 0;
    reconcile(
      $("#ev-fatal-list"),
      runs,
      (r) => r.run_id,
      (r) => el("li", { dataset: { run: r.run_id } },
        el("div", { className: "what" }, r.error || "failed"),
        el("div", { className: "text" }, r.error_message || ""),
        el("div", { className: "where" }, [formatClock(r.started_at), r.pipeline, r.error_stage].filter(Boolean).join(" · "), " · ",
          el("a", { href: rootUrl(`runs/${encodeURIComponent(r.run_id)}`).href }, `run ${r.run_id}`))),
      () => {},
    );
  }

  renderRecent(summary) {
    for (const e of (summary && summary.errors) || []) if (e.handled) this.recent.set(e.id, e);
    const f = this.filters;
    const list = [...this.recent.values()]
      .filter((e) => this.matches(e) && (!f.run || (e.run || "").startsWith(f.run)))
      .sort((a, b) => b.id - a.id)
      .slice(0, 100);
    $("#ev-recent-empty").hidden = list.length > 0;
    reconcile($("#ev-recent"), list, (e) => e.id, (e) => errorItem(this.app, e), () => {});
  }
}
