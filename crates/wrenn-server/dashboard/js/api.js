// The Wrenn API as the dashboard uses it: every call sends the key from sessionStorage.

const KEY = "wrenn.apiKey";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** A failed call: HTTP status, the contract's error code and a sentence for people. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const WORDS = {
  401: "The API key was not accepted. Sign out and sign in again with a valid key.",
  403: "This key's team is not allowed to do that.",
  404: "Not found: it may have been destroyed or deleted.",
  409: "Not possible in the current state.",
  413: "The file is too large.",
  502: "The capsule's agent did not answer.",
  503: "The host has no room for that right now.",
};

/** A sentence describing any error thrown by the API or the network. */
export function describe(err) {
  if (err instanceof ApiError) {
    const base = WORDS[err.status] || `The server answered ${err.status}.`;
    return err.message ? `${base} (${err.message})` : base;
  }
  if (err instanceof TypeError) return "Cannot reach the Wrenn server. Is it running?";
  return String(err && err.message ? err.message : err);
}

async function failure(resp) {
  let code = "internal_error";
  let message = "";
  try {
    const body = await resp.json();
    code = body?.error?.code || code;
    message = body?.error?.message || "";
  } catch {
    message = resp.statusText;
  }
  return new ApiError(resp.status, code, message);
}

/**
 * Calls `/v1{path}`. `json` is sent as a JSON body, `body` as is (FormData); with `raw` the
 * Response is returned. Otherwise the parsed JSON, or null for an empty body.
 */
export async function call(method, path, { json, body, raw, signal } = {}) {
  const headers = { "X-API-Key": session.key() || "" };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const resp = await fetch(`/v1${path}`, { method, headers, body, signal });
  if (!resp.ok) throw await failure(resp);
  if (raw) return resp;
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts) => call("GET", path, opts);
export const post = (path, json, opts) => call("POST", path, { ...opts, json });
export const del = (path, opts) => call("DELETE", path, opts);

/**
 * Follows `/v1/events/stream` (SSE read with fetch, so the key travels in a header) and calls
 * `onEvent(event)` for each event and `onState("on"|"off")` as the stream comes and goes.
 * Reconnects with backoff; returns a function that stops it.
 */
export function followEvents(onEvent, onState) {
  const abort = new AbortController();
  let delay = 500;
  (async () => {
    while (!abort.signal.aborted) {
      try {
        const resp = await call("GET", "/events/stream", { raw: true, signal: abort.signal });
        onState("on");
        delay = 500;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
            if (!data) continue;
            try { onEvent(JSON.parse(data)); } catch (e) { console.warn("bad event", e); }
          }
        }
      } catch (err) {
        if (abort.signal.aborted) return;
        if (err instanceof ApiError && err.status === 401) { onState("off"); return; }
      }
      onState("off");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  })();
  return () => abort.abort();
}

/** Opens the PTY WebSocket of a capsule; the key travels as a subprotocol. */
export function ptySocket(id) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/capsules/${encodeURIComponent(id)}/pty`, [
    "wrenn",
    `wrenn.key.${session.key()}`,
  ]);
  ws.binaryType = "arraybuffer";
  return ws;
}

/** Downloads `resp`'s body as a file named `name`. */
export async function saveResponse(resp, name) {
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
