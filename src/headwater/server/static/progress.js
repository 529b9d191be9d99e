// Progress bars of pipeline stages: a native <progress> (accessible by itself) with the
// stage's name and a percentage or count.

import { el, formatCount } from "./format.js";

/** A row for one stage: name, bar, text. */
export function progressRow(stage) {
  const bar = el("progress", { max: 1, "aria-label": `Progress of ${stage}` });
  return el(
    "div",
    { className: "progress-row", dataset: { stage } },
    el("span", { className: "stage", title: stage }, stage),
    bar,
    el("span", { className: "pct" }, "–"),
  );
}

/** Show `done` of `total` (an unknown total gives an indeterminate bar and a count). */
export function updateProgressRow(row, done, total, message) {
  const bar = row.querySelector("progress");
  const text = row.querySelector(".pct");
  if (typeof total === "number" && total > 0) {
    const fraction = Math.max(0, Math.min(1, done / total));
    bar.max = total;
    bar.value = Math.min(done, total);
    bar.dataset.done = fraction >= 1 ? "true" : "false";
    text.textContent = `${Math.floor(fraction * 100)}%`;
    row.title = `${formatCount(done)} of ${formatCount(total)}${message ? ` — ${message}` : ""}`;
  } else {
    bar.removeAttribute("value");
    bar.dataset.done = "false";
    text.textContent = formatCount(done);
    row.title = message || `${formatCount(done)} done`;
  }
}
