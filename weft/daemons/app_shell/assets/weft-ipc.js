// window.weftIpc for an app page, injected by weft-app-shell before the page's own scripts.
// send(m) goes to the app shell (a script message handler), which forwards it to this session only;
// onmessage receives this session's IPC_MESSAGE frames and appd's ERRORs, as parsed objects.
// Messages that arrive before the page sets onmessage wait for it (at most 256).
(() => {
  "use strict";
  const handler = window.webkit.messageHandlers.weft;
  const waiting = [];
  let listener = null;
  function flush() {
    while (listener && waiting.length) {
      const message = waiting.shift();
      try { listener(message); } catch (error) { console.error("weftIpc.onmessage:", error); }
    }
  }
  const ipc = {};
  Object.defineProperties(ipc, {
    send: { value: (message) => handler.postMessage(JSON.stringify(message === undefined ? null : message)) },
    onmessage: {
      get: () => listener,
      set: (callback) => { listener = typeof callback === "function" ? callback : null; flush(); },
    },
  });
  Object.freeze(ipc);
  Object.defineProperty(window, "weftIpc", { value: ipc });
  Object.defineProperty(window, "weftSessionId", { value: __WEFT_SESSION_ID__ });
  Object.defineProperty(window, "__weftDeliver", {
    value: (text) => {
      if (waiting.length >= 256) waiting.shift();
      waiting.push(JSON.parse(text));
      flush();
    },
  });
})();
