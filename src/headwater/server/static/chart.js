// A small hand-written canvas line chart over a time window: several series, each a
// list of (time, value) points; a missing value, or a stretch of time with no point
// (the server was down, the page was disconnected), is drawn as a gap, never as a line
// to zero. Drawn at most once per animation frame.

const PALETTE = ["--series-1", "--series-2", "--series-3", "--series-4", "--series-5", "--series-6"];

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  // four grid intervals: each ceiling divides into round steps (0.25, 0.5, 1, 1.5, 2, 2.5)
  for (const step of [1, 2, 4, 6, 8, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function spanText(seconds) {
  if (seconds >= 3600) return `-${Math.round(seconds / 3600)} h`;
  if (seconds >= 60) return `-${Math.round(seconds / 60)} min`;
  return `-${Math.round(seconds)} s`;
}

export class TimeChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} options
   * @param {(value: number) => string} options.format - legend labels
   * @param {(value: number) => string} options.axis - axis labels (default: format)
   * @param {HTMLElement} options.legend - a list filled with one item per series
   * @param {string} options.title - for the canvas's accessible label
   */
  constructor(canvas, { format, axis, legend, title }) {
    this.canvas = canvas;
    this.format = format;
    this.axis = axis || format;
    this.legend = legend;
    this.title = title;
    this.series = []; // {label, color, dash, t: number[], v: (number|null)[]}
    this.end = 0;
    this.span = 60;
    this.step = 1;
    this.scheduled = false;
    this.size = { width: 0, height: 0, ratio: 1 };
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  resize() {
    const rect = this.canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    this.size = { width: rect.width, height: rect.height, ratio };
    this.canvas.width = Math.max(1, Math.round(rect.width * ratio));
    this.canvas.height = Math.max(1, Math.round(rect.height * ratio));
    this.schedule();
  }

  /**
   * Show `series` over the window ending at `end` (seconds since the epoch), `span`
   * seconds long, with one point per `step` seconds expected.
   */
  set({ series, end, span, step }) {
    this.series = series.map((s, i) => ({ color: PALETTE[i % PALETTE.length], ...s }));
    this.end = end;
    this.span = span;
    this.step = step;
    let points = 0;
    let peak = 0;
    for (const s of this.series) {
      points = Math.max(points, s.t.length);
      for (const v of s.v) if (typeof v === "number" && v > peak) peak = v;
    }
    this.canvas.dataset.points = String(points);
    this.canvas.dataset.peak = String(peak);
    this.renderLegend();
    const described = this.series
      .map((s) => {
        const last = s.v.length ? s.v[s.v.length - 1] : null;
        return `${s.label} ${last === null || last === undefined ? "no data" : this.format(last)}`;
      })
      .join(", ");
    this.canvas.setAttribute("aria-label", `${this.title} over the last ${spanText(span).slice(1)}: ${described || "no data"}`);
    this.schedule();
  }

  renderLegend() {
    const items = this.series.map((s) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `var(${s.color})`; // CSSOM: allowed by the page's CSP
      if (s.dash) swatch.classList.add("dashed");
      const value = document.createElement("strong");
      const last = s.v.length ? s.v[s.v.length - 1] : null;
      value.textContent = last === null || last === undefined ? "–" : this.format(last);
      item.append(swatch, `${s.label} `, value);
      return item;
    });
    this.legend.replaceChildren(...items);
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.draw();
    });
  }

  draw() {
    const { width, height, ratio } = this.size;
    const ctx = this.canvas.getContext("2d");
    if (!ctx || width < 10 || height < 10) return;
    const style = getComputedStyle(this.canvas);
    const color = (name) => style.getPropertyValue(name).trim() || "#888";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const left = 58;
    const right = 8;
    const top = 8;
    const bottom = 20;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const start = this.end - this.span;

    let max = 0;
    for (const s of this.series) for (const v of s.v) if (typeof v === "number" && v > max) max = v;
    const ceiling = niceCeiling(max);

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = color("--muted");
    ctx.strokeStyle = color("--grid");
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const lines = 4;
    for (let i = 0; i <= lines; i++) {
      const y = Math.round(top + plotH - (plotH * i) / lines) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.fillText(this.axis((ceiling * i) / lines), left - 6, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(spanText(this.span), left, height - 5);
    ctx.textAlign = "right";
    ctx.fillText("now", left + plotW, height - 5);

    const empty = this.series.every((s) => s.t.length === 0);
    if (empty || !this.end) {
      ctx.textAlign = "center";
      ctx.fillText("waiting for data…", left + plotW / 2, top + plotH / 2);
      return;
    }
    const x = (t) => left + (plotW * (t - start)) / this.span;
    const gap = this.step * 2.5; // more than two missing points: the line breaks
    ctx.lineJoin = "round";
    for (const s of this.series) {
      ctx.strokeStyle = color(s.color);
      ctx.fillStyle = color(s.color);
      ctx.lineWidth = s.dash ? 1.5 : 2;
      ctx.setLineDash(s.dash ? [5, 4] : []);
      ctx.beginPath();
      let previous = null;
      let runLength = 0;
      let lone = null;
      s.t.forEach((t, i) => {
        const v = s.v[i];
        if (t < start) return;
        if (v === null || v === undefined || Number.isNaN(v)) {
          previous = null;
          return;
        }
        const px = x(t);
        const py = top + plotH - (plotH * Math.min(v, ceiling)) / ceiling;
        if (previous !== null && t - previous <= gap) {
          ctx.lineTo(px, py);
          runLength += 1;
        } else {
          if (runLength === 0 && lone) ctx.fillRect(lone[0] - 1.5, lone[1] - 1.5, 3, 3);
          ctx.moveTo(px, py);
          runLength = 0;
          lone = [px, py];
        }
        previous = t;
      });
      ctx.stroke();
      if (runLength === 0 && lone) ctx.fillRect(lone[0] - 1.5, lone[1] - 1.5, 3, 3);
    }
    ctx.setLineDash([]);
  }
}
