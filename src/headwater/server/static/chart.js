// A small hand-written canvas line chart: a rolling window of points, several series,
// gaps for missing values, drawn at most once per animation frame.

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  // four grid intervals: each ceiling divides into round steps (0.25, 0.5, 1, 1.5, 2, 2.5)
  for (const step of [1, 2, 4, 6, 8, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} options
   * @param {{label: string, color: string}[]} options.series - color: a CSS variable name
   * @param {(value: number) => string} options.format - legend labels
   * @param {(value: number) => string} options.axis - axis labels (default: format)
   * @param {number} options.capacity - points kept (the window)
   * @param {HTMLElement} options.legend - a list filled with one item per series
   * @param {string} options.title - for the canvas's accessible label
   */
  constructor(canvas, { series, format, axis, capacity = 120, legend, title }) {
    this.canvas = canvas;
    this.series = series;
    this.format = format;
    this.axis = axis || format;
    this.capacity = capacity;
    this.title = title;
    this.points = []; // {t, values: (number|null)[]}
    this.total = 0;
    this.peak = 0;
    this.scheduled = false;
    this.size = { width: 0, height: 0, ratio: 1 };
    this.legendValues = series.map((s) => {
      const value = document.createElement("strong");
      value.textContent = "–";
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `var(${s.color})`; // CSSOM: allowed by the page's CSP
      item.append(swatch, `${s.label} `, value);
      legend.append(item);
      return value;
    });
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

  /** Add one point (`values` in series order; null for a gap). */
  push(t, values) {
    this.points.push({ t, values });
    if (this.points.length > this.capacity) this.points.splice(0, this.points.length - this.capacity);
    this.total += 1;
    this.canvas.dataset.points = String(this.total);
    for (const v of values) if (typeof v === "number" && v > this.peak) this.peak = v;
    this.canvas.dataset.peak = String(this.peak);
    values.forEach((v, i) => {
      if (v !== null && v !== undefined) this.legendValues[i].textContent = this.format(v);
    });
    const described = this.series
      .map((s, i) => `${s.label} ${values[i] === null || values[i] === undefined ? "no data" : this.format(values[i])}`)
      .join(", ");
    this.canvas.setAttribute("aria-label", `${this.title}, latest: ${described}`);
    this.schedule();
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

    const left = 52;
    const right = 8;
    const top = 8;
    const bottom = 20;
    const plotW = width - left - right;
    const plotH = height - top - bottom;

    let max = 0;
    for (const p of this.points) for (const v of p.values) if (v !== null && v !== undefined && v > max) max = v;
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

    // x axis: the window ends now, one slot per point of the capacity
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    const interval = this.points.length > 1
      ? (this.points[this.points.length - 1].t - this.points[0].t) / (this.points.length - 1)
      : 0.5;
    const span = interval * (this.capacity - 1);
    ctx.fillText(`-${span > 10 ? Math.round(span / 5) * 5 : Math.round(span)} s`, left, height - 5);
    ctx.textAlign = "right";
    ctx.fillText("now", left + plotW, height - 5);

    if (this.points.length === 0) {
      ctx.textAlign = "center";
      ctx.fillText("waiting for data…", left + plotW / 2, top + plotH / 2);
      return;
    }
    const step = plotW / Math.max(1, this.capacity - 1);
    const offset = this.capacity - this.points.length;
    ctx.lineJoin = "round";
    ctx.lineWidth = 2;
    this.series.forEach((s, index) => {
      ctx.strokeStyle = color(s.color);
      ctx.beginPath();
      let drawing = false;
      this.points.forEach((p, i) => {
        const v = p.values[index];
        if (v === null || v === undefined || Number.isNaN(v)) {
          drawing = false;
          return;
        }
        const x = left + (offset + i) * step;
        const y = top + plotH - (plotH * Math.min(v, ceiling)) / ceiling;
        if (drawing) ctx.lineTo(x, y);
        else {
          ctx.moveTo(x, y);
          drawing = true;
        }
      });
      ctx.stroke();
    });
  }
}
