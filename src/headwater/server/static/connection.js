// One WebSocket connection to the server (protocol v1), reconnecting with backoff.

import { rootUrl } from "./format.js";

const REQUEST_TIMEOUT_MS = 10000;
const MAX_BACKOFF_MS = 10000;

/**
 * The server's WebSocket URL, with the token as `?token=` (browsers cannot set headers).
 * Relative to the page, so that it works where the server is mounted (`/hw/ws`).
 */
export function socketUrl(token) {
  const url = rootUrl("ws");
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  return url.href;
}

/** The page's own folder (where the server is mounted): `/` or `/hw/`. */
export function basePath() {
  return rootUrl("").pathname;
}

/**
 * Keep the token in a cookie of the server's paths, for clients that cannot send
 * headers (`EventSource`); an empty token removes it.
 */
export function rememberToken(token) {
  const value = token ? encodeURIComponent(token) : "";
  const expiry = token ? "" : "; max-age=0";
  document.cookie = `headwater_token=${value}; path=${basePath()}; SameSite=Strict${expiry}`;
}

export class Connection {
  /**
   * @param {object} options
   * @param {() => string} options.url - called for each (re)connection
   * @param {(message: object) => void} options.onMessage - every server message, in order
   * @param {(state: string, detail?: object) => void} options.onState - "connecting",
 *   "open", "closed" (detail: the close event's code and whether it ever opened)
   * @param {() => void} options.onOpen - after each successful (re)connection
   */
  constructor({ url, onMessage, onState, onOpen }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onState = onState;
    this.onOpen = onOpen;
    this.socket = null;
    this.pending = new Map();
    this.nextId = 0;
    this.backoff = 500;
    this.stopped = false;
    this.timer = null;
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    if (this.stopped) return;
    this.onState("connecting");
    const socket = new WebSocket(this.url());
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.backoff = 500;
      this.onState("open");
      this.onOpen();
    };
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      for (const { reject, timer } of this.pending.values()) {
        clearTimeout(timer);
        reject(new Error("connection closed"));
      }
      this.pending.clear();
      this.onState("closed", { code: event.code, opened });
      if (!this.stopped) {
        this.timer = setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
      }
    };
  }

  /** Stop reconnecting and close. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "page closed");
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return; // not JSON: nothing a v1 client can do with it
    }
    if (message === null || typeof message !== "object") return;
    const ref = message.ref;
    if (ref !== undefined && ref !== null && this.pending.has(ref)) {
      const { resolve, reject, timer } = this.pending.get(ref);
      this.pending.delete(ref);
      clearTimeout(timer);
      if (message.type === "error") reject(Object.assign(new Error(message.message), { code: message.code }));
      else resolve(message);
    }
    this.onMessage(message);
  }

  /** Send a message without waiting for a reply. */
  send(message) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /** Send a request with an `id`; resolves with the first reply carrying it as `ref`. */
  request(message) {
    if (!this.open) return Promise.reject(new Error("not connected"));
    const id = `d${++this.nextId}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no reply to ${message.type} within ${REQUEST_TIMEOUT_MS / 1000} s`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...message, id }));
    });
  }
}
