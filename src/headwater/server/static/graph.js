// The drawing of a pipeline: sources, composition, steps and sinks as boxes joined by
// arrows, each box with its stage's counters (in, out, errors, skipped) and its input
// queue, coloured as backpressure. Hand-written SVG; left to right on wide screens,
// top to bottom on narrow ones. `update()` changes only the texts and colours.

import { formatCount } from "./format.js";

// the SVG namespace is a name, never fetched (written in two parts: assets hold no URL)
const NS = ["http:", "//www", ".w3.org/2000/svg"].join("");
const W = 172;
const H = 66;
const GAP_X = 40;
const GAP_Y = 14;
const QUEUE_FULL = 1024; // the default capacity of a channel (batch_size x buffer)

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const child of children) node.append(child);
  return node;
}

/** The backpressure class of a queue depth: q0 empty, q1 filling, q2 (nearly) full. */
export function queueClass(depth) {
  if (!depth) return "q0";
  return depth >= QUEUE_FULL * 0.75 ? "q2" : "q1";
}

function shorten(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export class PipelineGraph {
  constructor(box) {
    this.box = box;
    this.nodes = new Map();
    this.graph = null;
    this.vertical = null;
    new ResizeObserver(() => {
      const vertical = this.box.clientWidth < 560;
      if (this.graph && vertical !== this.vertical) this.draw(this.graph, this.counters);
    }).observe(box);
  }

  /** Draw `graph` ({sources, compose, steps, sinks, dead_letter}) with `counters`. */
  draw(graph, counters = {}) {
    this.graph = graph;
    this.counters = counters;
    this.vertical = this.box.clientWidth < 560;
    const columns = [];
    columns.push((graph.sources || []).map((s) => ({ ...s, kind: "source" })));
    if (graph.compose) columns.push([{ stage: graph.compose, component: "compose", kind: "compose" }]);
    for (const step of graph.steps || []) columns.push([{ ...step, kind: "step" }]);
    const sinks = (graph.sinks || []).map((s) => ({ ...s, kind: "sink" }));
    if (graph.dead_letter) sinks.push({ stage: graph.dead_letter, component: "dead letter", kind: "dead" });
    columns.push(sinks);
    const filled = columns.filter((c) => c.length);
    const most = Math.max(...filled.map((c) => c.length));
    const along = (i) => i * ((this.vertical ? H : W) + (this.vertical ? GAP_X / 1.5 : GAP_X));
    const across = (j, n) => (most - n) * ((this.vertical ? W : H) + GAP_Y) / 2 + j * ((this.vertical ? W : H) + GAP_Y);
    const width = this.vertical ? most * (W + GAP_Y) - GAP_Y : along(filled.length - 1) + W;
    const height = this.vertical ? along(filled.length - 1) + H : most * (H + GAP_Y) - GAP_Y;
    const root = svg("svg", {
      viewBox: `-2 -2 ${width + 4} ${height + 4}`,
      width: width + 4,
      class: "pipeline-graph",
      role: "img",
      "aria-label": `Pipeline: ${filled.map((c) => c.map((n) => n.stage).join(" + ")).join(" → ")}`,
    });
    const defs = svg("defs", {}, svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" })));
    root.append(defs);
    const place = filled.map((column, i) => column.map((node, j) => {
      const a = along(i);
      const b = across(j, column.length);
      return { node, x: this.vertical ? b : a, y: this.vertical ? a : b };
    }));
    const edges = svg("g", { class: "edges" });
    for (let i = 0; i + 1 < place.length; i++) {
      for (const from of place[i]) {
        for (const to of place[i + 1]) {
          const [x1, y1, x2, y2] = this.vertical
            ? [from.x + W / 2, from.y + H, to.x + W / 2, to.y]
            : [from.x + W, from.y + H / 2, to.x, to.y + H / 2];
          const mid = this.vertical ? `C ${x1} ${(y1 + y2) / 2} ${x2} ${(y1 + y2) / 2} ${x2} ${y2}` : `C ${(x1 + x2) / 2} ${y1} ${(x1 + x2) / 2} ${y2} ${x2} ${y2}`;
          edges.append(svg("path", { d: `M ${x1} ${y1} ${mid}`, class: `edge${to.node.kind === "dead" ? " dead" : ""}`, "marker-end": "url(#arrow)" }));
        }
      }
    }
    root.append(edges);
    this.nodes.clear();
    for (const column of place) {
      for (const { node, x, y } of column) {
        const title = svg("text", { x: 10, y: 17, class: "n-stage" }, shorten(node.stage, 24));
        const component = svg("text", { x: 10, y: 31, class: "n-component" }, shorten(`${node.kind} · ${node.component}`, 28));
        const flow = svg("text", { x: 10, y: 46, class: "n-flow" });
        const extra = svg("text", { x: 10, y: 59, class: "n-extra" });
        const queue = svg("rect", { x: 0, y: 0, width: 5, height: H, rx: 2, class: "n-queue q0" });
        const frame = svg("rect", { x: 0, y: 0, width: W, height: H, rx: 8, class: "n-frame" });
        const group = svg("g", { transform: `translate(${x} ${y})`, class: `node ${node.kind}`, "data-stage": node.stage }, frame, queue, title, component, flow, extra);
        const tip = svg("title", {}, node.stage);
        group.append(tip);
        root.append(group);
        this.nodes.set(node.stage, { group, flow, extra, queue, tip, kind: node.kind });
      }
    }
    this.box.replaceChildren(root);
    this.update(counters);
  }

  /** Show each stage's counters: `{stage: {in, out, errors, skipped, queue}}`. */
  update(counters = {}) {
    this.counters = counters;
    for (const [stage, n] of this.nodes) {
      const c = counters[stage] || {};
      const inn = c.in ?? c.items_in;
      const out = c.out ?? c.items_out;
      const errors = c.errors || 0;
      const skipped = c.skipped || 0;
      const queue = c.queue || 0;
      const flowText = n.kind === "source" ? `out ${formatCount(out)}` : n.kind === "compose" ? "" : `in ${formatCount(inn)} → out ${formatCount(out)}`;
      n.flow.textContent = flowText;
      n.extra.textContent = [errors ? `${formatCount(errors)} errors` : null, skipped ? `${formatCount(skipped)} skipped` : null, queue ? `queue ${formatCount(queue)}` : null]
        .filter(Boolean).join(" · ");
      n.group.dataset.in = String(inn ?? "");
      n.group.dataset.out = String(out ?? "");
      n.group.dataset.errors = String(errors);
      n.group.classList.toggle("has-errors", errors > 0);
      n.queue.setAttribute("class", `n-queue ${queueClass(queue)}`);
      n.tip.textContent = `${stage}: in ${formatCount(inn)}, out ${formatCount(out)}, errors ${formatCount(errors)}, skipped ${formatCount(skipped)}, queue ${formatCount(queue)}`;
    }
  }
}
