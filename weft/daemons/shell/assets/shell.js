// The system shell page. It talks only to its Python side (weft-shell): commands go out through
// the script message handler, updates come in through window.__weftDeliver(text). Every string
// that comes from a package (names, ids, reasons) is set as textContent, never parsed as HTML.
"use strict";

(() => {
  const post = (command) => window.webkit.messageHandlers.weft.postMessage(JSON.stringify(command));
  const byId = (id) => document.getElementById(id);
  const state = { apps: null, sessions: [] };  // apps: null until appd has listed them
  let noticeTimer = 0;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderLauncher() {
    const list = byId("launcher");
    list.replaceChildren();
    for (const app of state.apps || []) {
      const label = app.name || app.app_id;
      const tile = element("button", "tile");
      tile.type = "button";
      tile.title = `${app.app_id} ${app.version}`;
      tile.append(element("span", "icon", label.slice(0, 1).toUpperCase()), element("span", "name", label));
      tile.addEventListener("click", () => post({ type: "launch", app_id: app.app_id }));
      const item = element("li");
      item.append(tile);
      list.append(item);
    }
    byId("empty").hidden = state.apps === null || state.apps.length > 0;
  }

  function renderTasks() {
    const list = byId("tasks");
    list.replaceChildren();
    for (const session of state.sessions) {
      const item = element("li", "task");
      const focus = element("button", "focus", session.name);
      focus.title = `${session.app_id} (session ${session.session_id})`;
      focus.addEventListener("click", () => post({ type: "focus", session_id: session.session_id }));
      const close = element("button", "close", "×");
      close.setAttribute("aria-label", `close ${session.name}`);
      close.addEventListener("click", () => post({ type: "close", session_id: session.session_id }));
      item.append(focus, close);
      list.append(item);
    }
  }

  function report() {
    post({
      type: "rendered",
      tiles: Array.from(document.querySelectorAll("#launcher .name"), (node) => node.textContent),
      tasks: Array.from(document.querySelectorAll("#tasks .focus"), (node) => node.textContent),
      notice: byId("notice").textContent,
      connection: byId("connection").textContent,
      html_elements_in_launcher: byId("launcher").querySelectorAll("b, img, script, iframe").length,
    });
  }

  function showNotice(text) {
    byId("notice").textContent = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { byId("notice").textContent = ""; report(); }, 15000);
  }

  const handlers = {
    installed: (update) => { state.apps = update.apps; renderLauncher(); },
    running: (update) => { state.sessions = update.sessions; renderTasks(); },
    status: (update) => { byId("connection").textContent = update.connected ? "" : update.text; },
    notice: (update) => showNotice(update.text),
  };

  Object.defineProperty(window, "__weftDeliver", {
    value: (text) => {
      const update = JSON.parse(text);
      const handler = handlers[update.kind];
      if (handler) { handler(update); report(); }
    },
  });

  function tick() {
    byId("clock").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  document.addEventListener("keydown", (event) => { if (event.key === "F5") event.preventDefault(); });
  tick();
  setInterval(tick, 5000);
  post({ type: "ready" });
})();
