// The overview's charts: items per second, p50/p99 latency and queue depth, for every
// pipeline or for the stages of one, over 1 minute (a point a second), 15 minutes (10 s)
// or an hour (1 min). Points come from the server's own bounded history
// (`/api/dashboard/history`), fetched again at each step.

import { TimeChart } from "./chart.js";
import { el, formatAxis, formatMillis, formatRate } from "./format.js";

const $ = (selector) => document.querySelector(selector);
const MAX_SERIES = 6;

const ms = (values) => values.map((v) => (v === null || v === undefined ? null : v * 1000));

export class ChartsPanel {
  constructor(app) {
    this.app = app;
    this.timer = null;
    this.known = [];
    this.throughput = new TimeChart($("#throughput-chart"), {
      title: "Items per second", format: formatRate, axis: formatAxis, legend: $("#throughput-legend"),
    });
    this.latency = new TimeChart($("#latency-chart"), {
      title: "Latency", format: formatMillis, legend: $("#latency-legend"),
    });
    this.queue = new TimeChart($("#queue-chart"), {
      title: "Queue depth", format: formatAxis, legend: $("#queue-legend"),
    });
    $("#chart-range").addEventListener("change", () => this.refresh());
    $("#chart-pipeline").addEventListener("change", () => this.refresh());
  }

  start(names) {
    this.pipelines(names);
    this.refresh();
  }

  /** Keep the pipeline choice in step with the pipelines the server knows. */
  pipelines(names) {
    if (names.join("\n") === this.known.join("\n")) return;
    this.known = names;
    const select = $("#chart-pipeline");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "every pipeline"), ...names.map((n) => el("option", { value: n }, `stages of ${n}`)));
    select.value = names.includes(chosen) ? chosen : "";
  }

  async refresh() {
    clearTimeout(this.timer);
    const range = $("#chart-range").value;
    const pipeline = $("#chart-pipeline").value;
    const query = new URLSearchParams({ range });
    if (pipeline) query.set("pipeline", pipeline);
    let step = 1;
    try {
      const data = await this.app.api(`/api/dashboard/history?${query}`);
      step = data.step;
      this.show(data, pipeline);
    } catch (error) {
      if (error.status === 403) {
        for (const canvas of document.querySelectorAll(".charts canvas")) {
          canvas.setAttribute("aria-label", "Not shown: this token may not see the dashboard ($dashboard)");
        }
        return;
      }
      // disconnected: the page is marked stale; try again at the next step
    }
    this.timer = setTimeout(() => this.refresh(), Math.max(1, step) * 1000);
  }

  show(data, pipeline) {
    const series = data.series || {};
    const window = { end: data.now || Date.now() / 1000, span: data.span, step: data.step };
    const pick = (prefix) => Object.keys(series).filter((k) => k.startsWith(prefix)).sort().slice(0, MAX_SERIES);
    const label = (key) => key.replace(/^pipeline:/, "").replace(/^stage:[^/]*\//, "");
    let parts;
    let latency;
    if (pipeline) {
      parts = pick(`stage:${pipeline}/`);
      const own = series[`pipeline:${pipeline}`];
      latency = own ? [
        { label: "end to end p50", t: own.t, v: ms(own.p50) },
        { label: "end to end p99", t: own.t, v: ms(own.p99), dash: true },
      ] : [];
      for (const key of parts.slice(0, MAX_SERIES - 2)) {
        if (key.includes("/sources.")) continue;
        latency.push({ label: `${label(key)} p99 per batch`, t: series[key].t, v: ms(series[key].p99) });
      }
    } else {
      parts = pick("pipeline:");
      const total = series.total || { t: [], p50: [], p99: [] };
      latency = [
        { label: "p50", t: total.t, v: ms(total.p50) },
        { label: "p99", t: total.t, v: ms(total.p99), dash: true },
      ];
    }
    const throughput = parts.map((key) => ({ label: label(key), t: series[key].t, v: series[key].items }));
    if (!pipeline && series.total) throughput.unshift({ label: "all", t: series.total.t, v: series.total.items, dash: true });
    this.throughput.set({ ...window, series: throughput.slice(0, MAX_SERIES) });
    this.latency.set({ ...window, series: latency.slice(0, MAX_SERIES) });
    this.queue.set({ ...window, series: parts.map((key) => ({ label: label(key), t: series[key].t, v: series[key].queue })) });
  }
}
