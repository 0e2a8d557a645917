// A live terminal (xterm.js) over a capsule's PTY WebSocket, with resize and reconnect.
//
// The session's tag is kept in sessionStorage, so a dropped connection or a page reload
// re-attaches to the same shell ({"type":"connect","tag"}); if that shell is gone, a new one
// is started.

import { Terminal } from "../vendor/xterm/xterm.mjs";
import { FitAddon } from "../vendor/addon-fit/addon-fit.mjs";
import { ptySocket } from "./api.js";
import { h } from "./dom.js";

const encoder = new TextEncoder();

/** A terminal bound to capsule `id`; returns {el, dispose}. */
export function terminalPanel(id) {
  const tagKey = `wrenn.pty.${id}`;
  const box = h("div", { class: "terminal-box", id: "terminal" });
  const state = h("span", { class: "muted small", id: "terminal-state", role: "status" }, "connecting…");
  const reconnect = h("button", { type: "button", id: "terminal-reconnect", onclick: () => open(true) }, "Reconnect");
  const fresh = h("button", {
    type: "button",
    onclick: () => {
      send({ type: "kill" }); // ends the old shell, which would otherwise outlive its socket
      sessionStorage.removeItem(tagKey);
      term.reset();
      open(true);
    },
  }, "New shell");
  const help = h("p", { class: "muted small", tabindex: "-1", id: "terminal-help" },
    "Click the terminal or Tab into it to type. It keeps Tab for the shell: press Ctrl+] to leave it.");
  const el = h("div", {},
    h("div", { class: "term-bar" }, reconnect, fresh, state),
    box,
    help);

  const term = new Terminal({
    cursorBlink: true,
    fontSize: 13,
    fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace',
    theme: { background: "#0d1117", foreground: "#e6edf3" },
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  // Ctrl+] (telnet's escape key) moves the focus out, so the keyboard is never trapped.
  term.attachCustomKeyEventHandler((e) => {
    if (e.ctrlKey && !e.altKey && !e.metaKey && (e.key === "]" || e.code === "BracketRight")) {
      if (e.type === "keydown") help.focus();
      return false;
    }
    return true;
  });

  let ws = null;
  let disposed = false;
  let retry = null;
  let delay = 500;
  let exited = false;

  const send = (obj) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); };
  const setState = (text) => { state.textContent = text; };

  function open(manual) {
    clearTimeout(retry);
    if (ws) { ws.onclose = null; ws.close(); }
    exited = false;
    if (manual) delay = 500;
    const tag = sessionStorage.getItem(tagKey);
    const sock = ptySocket(id);
    ws = sock;
    setState(tag ? "re-attaching…" : "starting a shell…");
    sock.onopen = () => {
      if (tag) {
        sock.send(JSON.stringify({ type: "connect", tag }));
        send({ type: "resize", cols: term.cols, rows: term.rows });
        setState(`connected (${tag})`);
      } else {
        sock.send(JSON.stringify({ type: "start", cmd: "", cols: term.cols, rows: term.rows, envs: { TERM: "xterm-256color" } }));
      }
      delay = 500;
    };
    sock.onmessage = (msg) => {
      if (msg.data instanceof ArrayBuffer) {
        term.write(new Uint8Array(msg.data));
        return;
      }
      let m;
      try { m = JSON.parse(msg.data); } catch { return; }
      if (m.type === "started") {
        sessionStorage.setItem(tagKey, m.tag);
        setState(`connected (${m.tag})`);
      } else if (m.type === "exit") {
        exited = true;
        sessionStorage.removeItem(tagKey);
        setState(`the shell exited with code ${m.exit_code}; press "New shell" for another`);
      } else if (m.type === "error" && m.fatal) {
        if (tag) {
          // The old session is gone: start a new one.
          sessionStorage.removeItem(tagKey);
          sock.onclose = null;
          sock.close();
          open(false);
        } else {
          exited = true;
          setState(`terminal error: ${m.data}`);
        }
      } else if (m.type === "ping" || !m.type) {
        send({ type: "pong" });
      }
    };
    sock.onclose = () => {
      if (disposed || exited || ws !== sock) return;
      setState(`disconnected; reconnecting in ${Math.round(delay / 1000) || 1} s…`);
      retry = setTimeout(() => open(false), delay);
      delay = Math.min(delay * 2, 10000);
    };
  }

  term.onData((d) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d)); });
  term.onBinary((d) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(Uint8Array.from(d, (c) => c.charCodeAt(0)));
  });
  term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
  const observer = new ResizeObserver(() => { try { fit.fit(); } catch { /* not visible */ } });

  // Opened once the element is in the document (xterm measures its cells).
  requestAnimationFrame(() => {
    if (disposed) return;
    term.open(box);
    fit.fit();
    observer.observe(box);
    open(false);
  });

  return {
    el,
    dispose() {
      disposed = true;
      clearTimeout(retry);
      observer.disconnect();
      if (ws) { ws.onclose = null; ws.close(); }
      term.dispose();
    },
  };
}
