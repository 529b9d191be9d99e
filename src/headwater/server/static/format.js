// Small DOM and formatting helpers shared by the dashboard's modules.

/** Create an element: el("td", {className: "num"}, "12"). Text children are never parsed as HTML. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("aria-") || key === "role" || key === "for") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const compact = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1, notation: "compact" });
const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

/** 1234 -> "1,234"; 12345678 -> "12M". */
export function formatCount(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Math.abs(value) >= 100000 ? compact.format(value) : whole.format(value);
}

/** A rate per second with one decimal below 10. */
export function formatRate(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value > 0 && value < 9.95 && !Number.isInteger(value)) return value.toFixed(1);
  return formatCount(value);
}

/** A value on a chart's axis: "0.25", "1.5", "7,500", "20K". */
export function formatAxis(value) {
  if (Number.isInteger(value)) return formatCount(value);
  return String(Number(value.toPrecision(3)));
}

/** Seconds as "850 µs", "12.5 ms", "1.20 s". */
export function formatSeconds(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value < 0.001) return `${Math.round(value * 1e6)} µs`;
  if (value < 1) return `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms`;
  return `${value.toFixed(2)} s`;
}

/** Milliseconds for chart axes: "0.25 ms", "12 ms", "1.5 s". */
export function formatMillis(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value >= 1000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 10) return `${Math.round(value)} ms`;
  return `${Number(value.toPrecision(2))} ms`;
}

/** A wall-clock time (seconds since the epoch) as "14:03:07". */
export function formatClock(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

/** A duration in seconds as "3.2 s", "4 min 10 s". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A chunk's data as one line of text, cut to `limit` characters. */
export function preview(data, limit = 240) {
  let text;
  if (typeof data === "string") text = data;
  else {
    try {
      text = JSON.stringify(data);
    } catch {
      text = String(data);
    }
  }
  if (text === undefined) text = String(data);
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

/** A run id or stream id shortened for tables (the full one goes in the title). */
export function shortId(id, keep = 12) {
  if (!id) return "–";
  return id.length > keep ? `${id.slice(0, keep)}…` : id;
}

/**
 * Keep the children of `parent` in step with `items`: one child per key, reused between
 * updates (focus and scroll survive), created with `create(item)`, refreshed with
 * `update(node, item)`, in the order of `items`; children of vanished keys are removed.
 */
export function reconcile(parent, items, key, create, update) {
  const existing = new Map();
  for (const child of parent.children) existing.set(child.dataset.key, child);
  let previous = null;
  for (const item of items) {
    const id = String(key(item));
    let node = existing.get(id);
    if (node) existing.delete(id);
    else {
      node = create(item);
      node.dataset.key = id;
    }
    update(node, item);
    const expected = previous ? previous.nextElementSibling : parent.firstElementChild;
    if (expected !== node) parent.insertBefore(node, expected);
    previous = node;
  }
  for (const node of existing.values()) node.remove();
}

/** The URL of `path` relative to the dashboard's root (`""` -> the root itself), wherever
 * the page is (`/`, `/runs/ID`) and wherever the server is mounted (`/hw/`). */
export function rootUrl(path = "") {
  const root = new URL(document.documentElement.dataset.root || "./", location.href);
  return new URL(path.replace(/^\//, ""), root);
}

/** A value of any JSON type as short text. */
export function valueText(value) {
  if (typeof value === "string") return value;
  return preview(value, 400);
}
