// headwater dashboard: one page, three views chosen by its path, live over one WebSocket.
//
// * `/`: the overview (run form, charts, runs, pipelines, streams, stream view, errors);
// * `/runs/ID`: one run (params, pipeline graph, stages, fatal error, stream);
// * `/errors`: every error, with the metrics' totals and filters.
// The `$dashboard` stream brings a summary every ~500 ms; runs and chart history come
// from `/api/runs` and `/api/dashboard/history` (fetched again at each chart step). When
// the connection drops, everything shown is marked stale ("disconnected since"), actions
// are disabled, and it is all fetched again on reconnection. No request leaves this
// server: no CDN, no font, no analytics.

import { Connection, rememberToken, socketUrl } from "./connection.js";
import { ErrorsView } from "./errors-view.js";
import { el, formatClock, rootUrl } from "./format.js";
import { Overview } from "./overview.js";
import { RunPage } from "./run-page.js";
import { StreamView } from "./stream-view.js";

const FEED = "$dashboard";
const TOKEN_KEY = "headwater-token";

const $ = (selector) => document.querySelector(selector);

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** What the views share: the connection, the API, the feed's summary, the stream view. */
export class App {
  constructor() {
    this.token = readToken();
    this.summary = null;
    this.feed = "off"; // off | subscribing | live | denied
    this.viewSubscribed = false;
    this.staleSince = null;
    this.listeners = new Set();
    this.nextCancel = 0;
    this.stream = new StreamView($("#stream-view"), { maxRows: 500 });
    this.connection = new Connection({
      url: () => socketUrl(this.token),
      onMessage: (m) => this.onMessage(m),
      onState: (s, d) => this.setConnectionState(s, d),
      onOpen: () => this.resubscribe(),
    });
    $("#sv-unsubscribe").addEventListener("click", () => {
      if (this.stream.stream && this.viewSubscribed) this.connection.send({ type: "unsubscribe", stream: this.stream.stream });
    });
    $("#cancel-button").addEventListener("click", () => {
      if (this.stream.run) this.cancel({ run: this.stream.run });
    });
    $("#auth").addEventListener("submit", (event) => {
      event.preventDefault();
      this.token = $("#auth-token").value.trim();
      try {
        sessionStorage.setItem(TOKEN_KEY, this.token);
      } catch {
        // storage unavailable: the token lives in this page only
      }
      $("#auth").hidden = true;
      this.start();
    });
    const path = rootUrl("").pathname;
    const here = location.pathname.startsWith(path) ? location.pathname.slice(path.length) : "";
    if (here.startsWith("runs/")) {
      this.viewName = "run";
      this.view = new RunPage(this, decodeURIComponent(here.slice(5)));
    } else if (here === "errors") {
      this.viewName = "errors";
      this.view = new ErrorsView(this);
    } else {
      this.viewName = "overview";
      this.view = new Overview(this);
    }
    document.body.dataset.view = this.viewName;
    for (const name of ["overview", "run", "errors"]) $(`#view-${name}`).hidden = name !== this.viewName;
    for (const link of document.querySelectorAll(".tabs a")) {
      if (link.id === `nav-${this.viewName}`) link.setAttribute("aria-current", "page");
    }
  }

  // -- HTTP ----------------------------------------------------------------------------

  async api(path) {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const response = await fetch(rootUrl(path), { headers, cache: "no-store" });
    if (response.status === 401) {
      this.showAuth(this.token ? "Token rejected: the server does not accept this token. Type another one." : "This server requires a token.");
      throw new HttpError(401, "authentication required");
    }
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).message || message;
      } catch {
        // not JSON
      }
      throw new HttpError(response.status, message);
    }
    return response.json();
  }

  showAuth(text) {
    const form = $("#auth");
    $("#auth-message").textContent = text;
    $("#auth-message").dataset.kind = this.token ? "error" : "info";
    if (!form.hidden) return;
    form.hidden = false;
    $("#auth-token").value = "";
    $("#auth-token").focus();
  }

  // -- start ---------------------------------------------------------------------------

  async start() {
    rememberToken(this.token);
    try {
      const health = await this.api("/healthz");
      $("#version").textContent = `v${health.version}`;
    } catch {
      // the version is cosmetic
    }
    try {
      // the first authenticated request says whether the token is good
      await this.api("/api/streams");
    } catch (error) {
      if (error.status === 401) return;
    }
    try {
      const history = await this.api("/api/dashboard");
      if (history.summary) this.setSummary(history.summary);
    } catch (error) {
      if (error.status === 403) this.feedDenied();
    }
    await this.view.start();
    this.connection.connect();
  }

  setConnectionState(value, detail = {}) {
    const pill = $("#conn");
    pill.dataset.state = value;
    pill.textContent = { connecting: "connecting…", open: "live", closed: "disconnected: retrying" }[value] || value;
    if (value === "open") {
      if (this.staleSince !== null) {
        this.staleSince = null;
        document.body.removeAttribute("data-stale");
        $("#stale").hidden = true;
        this.view.reconnected();
      }
    } else if (value === "closed") {
      this.viewSubscribed = false;
      if (this.feed !== "denied") this.feed = "off";
      if (this.staleSince === null) {
        this.staleSince = Date.now() / 1000;
        document.body.dataset.stale = "true";
        const banner = $("#stale");
        banner.textContent = `Disconnected since ${formatClock(this.staleSince)}: what this page shows is stale (greyed out) until the server answers again.`;
        banner.hidden = false;
      }
      if (!detail.opened && this.staleSince !== null) this.probeAuth();
    }
    this.updateButtons();
    this.view.render();
  }

  /** A WebSocket that never opens: ask over HTTP why (a rejected token says so). */
  async probeAuth() {
    try {
      await this.api("/api/streams");
    } catch {
      // 401 shows the form; anything else: the server is down, the banner says so
    }
  }

  get live() {
    return this.connection.open && this.staleSince === null;
  }

  async resubscribe() {
    if (this.feed !== "denied") this.subscribeFeed();
    const view = this.stream;
    if (view.stream && !view.complete) {
      const request = { type: "subscribe", stream: view.stream };
      if (view.epoch !== null) {
        request.since = view.lastSeq;
        request.epoch = view.epoch;
      } else {
        request.since = 0;
      }
      try {
        await this.connection.request(request);
        this.viewSubscribed = true;
      } catch (error) {
        view.unavailable(error.code || "error", error.message);
      }
      this.updateButtons();
    }
  }

  async subscribeFeed() {
    this.feed = "subscribing";
    try {
      await this.connection.request({ type: "subscribe", stream: FEED });
      this.feed = "live";
    } catch (error) {
      if (error.code === "unauthorized") {
        this.feedDenied();
        return;
      }
      this.feed = "off";
      if (this.connection.open) setTimeout(() => this.connection.open && this.feed === "off" && this.subscribeFeed(), 2000);
    }
  }

  feedDenied() {
    this.feed = "denied";
    document.body.dataset.denied = "true";
    const banner = $("#denied");
    banner.textContent = "This token may not see the dashboard: the server's live feed ($dashboard) is not allowed for it, so runs, streams, charts and errors are not shown. Runs started here and the streams it may follow still work.";
    banner.hidden = false;
    this.view.render();
  }

  // -- messages ------------------------------------------------------------------------

  onMessage(message) {
    const stream = message.stream;
    if (stream === FEED) {
      if (message.type === "stream_update") this.setSummary(message.data);
      else if (message.type === "stream_complete") {
        // the feed closes when idle or at shutdown; subscribing again reopens it
        this.feed = "off";
        if (message.reason !== "shutdown" && this.connection.open) setTimeout(() => this.subscribeFeed(), 500);
      }
    } else if (stream !== undefined && stream === this.stream.stream && message.type !== "run_started") {
      this.streamMessage(message);
    } else if (message.type === "error" && typeof message.ref === "string" && message.ref.startsWith("cancel-")) {
      this.view.message(`Cancel failed: ${message.code}: ${message.message}`, "error");
    }
  }

  setSummary(summary) {
    this.summary = summary;
    for (const listener of this.listeners) listener(summary);
    this.scheduleRender();
  }

  streamMessage(message) {
    const view = this.stream;
    switch (message.type) {
      case "stream_update":
        view.chunk(message);
        break;
      case "subscribed":
        view.subscribed(message);
        break;
      case "progress":
        view.progress(message);
        break;
      case "dropped":
        view.droppedMessages(message);
        break;
      case "stream_error":
        view.note(`${message.error.error || "error"}: ${message.error.message || ""}`);
        break;
      case "stream_complete":
        view.completed(message);
        this.viewSubscribed = false;
        this.updateButtons();
        this.view.streamEnded(message);
        break;
      case "unsubscribed":
        view.detached();
        this.viewSubscribed = false;
        this.updateButtons();
        break;
      default:
        break;
    }
  }

  scheduleRender() {
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    requestAnimationFrame(() => {
      this.renderScheduled = false;
      this.view.render();
    });
  }

  // -- the stream view and runs ----------------------------------------------------------

  /** Show `stream` in the stream view (subscribing from its first kept chunk). */
  async showStream(stream, { run = null, subscribed = false } = {}) {
    const view = this.stream;
    if (view.stream === stream && (this.viewSubscribed || subscribed || view.complete)) return;
    const previous = view.stream;
    if (previous && previous !== stream && this.viewSubscribed && !view.complete) {
      this.connection.send({ type: "unsubscribe", stream: previous });
    }
    view.reset(stream, { run });
    const links = $("#sv-links");
    links.replaceChildren();
    if (run) {
      links.append(el("a", { href: rootUrl(`runs/${encodeURIComponent(run)}`).href }, `Run ${run}`), " · ");
    }
    links.append(el("a", { href: rootUrl(`api/streams/${encodeURIComponent(stream)}/events?since=0`).href }, "event stream"));
    this.viewSubscribed = subscribed;
    this.scheduleRender();
    this.updateButtons();
    // not connected yet: the subscription is made when the connection opens
    if (subscribed || !this.connection.open) return;
    try {
      await this.connection.request({ type: "subscribe", stream, since: 0 });
      if (view.stream === stream) this.viewSubscribed = true;
    } catch (error) {
      if (view.stream === stream) view.unavailable(error.code || "error", error.message);
    }
    this.updateButtons();
  }

  /** Is run `id` going on, as far as the live feed says? */
  runIsLive(id) {
    const runs = (this.summary && this.summary.runs) || [];
    const run = runs.find((r) => r.run === id);
    return Boolean(run && (run.state === "running" || run.state === "pending"));
  }

  cancel(target) {
    const id = `cancel-${++this.nextCancel}`;
    if (!this.connection.send({ type: "cancel", id, ...target })) this.view.message("Not connected.", "error");
  }

  /** Start `pipeline` with `params`; resolves with `run_started`. */
  run(pipeline, params) {
    return this.connection.request({ type: "run", pipeline, params });
  }

  updateButtons() {
    const view = this.stream;
    const live = this.live;
    const cancel = $("#cancel-button");
    cancel.disabled = !live || !view.stream || !view.run || view.complete;
    cancel.textContent = view.run ? `Cancel run ${view.run.slice(0, 8)}` : "Cancel this run";
    cancel.setAttribute("aria-label", view.run ? `Cancel run ${view.run} (the run of the stream shown)` : "Cancel the run of the stream shown");
    $("#sv-unsubscribe").disabled = !this.viewSubscribed || view.complete;
    this.view.updateButtons();
  }
}

function readToken() {
  try {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
    if (fromHash) {
      sessionStorage.setItem(TOKEN_KEY, fromHash);
      history.replaceState(null, "", location.pathname + location.search);
      return fromHash;
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

const app = new App();
window.addEventListener("pagehide", () => app.connection.stop());
app.updateButtons();
app.start();
