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

/**
 * Show `done` of `total` (an unknown total gives an indeterminate bar and a count).
 * `state` is the run's: a bar of a failed run is red and one of a cancelled run amber,
 * however far it got; a finished run never shows an indeterminate bar.
 */
export function updateProgressRow(row, done, total, message, state = "running") {
  const bar = row.querySelector("progress");
  const text = row.querySelector(".pct");
  bar.dataset.state = state;
  if (typeof total === "number" && total > 0) {
    const fraction = Math.max(0, Math.min(1, done / total));
    bar.max = total;
    bar.value = Math.min(done, total);
    bar.dataset.done = fraction >= 1 ? "true" : "false";
    text.textContent = `${Math.floor(fraction * 100)}%`;
    row.title = `${formatCount(done)} of ${formatCount(total)}${message ? ` — ${message}` : ""}`;
  } else if (state !== "running" && state !== "pending") {
    bar.max = 1;
    bar.value = state === "succeeded" ? 1 : 0;
    bar.dataset.done = state === "succeeded" ? "true" : "false";
    text.textContent = formatCount(done);
    row.title = `${formatCount(done)} done (${state})`;
  } else {
    bar.removeAttribute("value");
    bar.dataset.done = "false";
    text.textContent = formatCount(done);
    row.title = message || `${formatCount(done)} done`;
  }
}
