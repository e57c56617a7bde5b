// The chat page: sends a message without leaving the page and shows the conversation as the
// store holds it, asked for again every second, so that a reply shows once it is committed.
// While a reply is awaited, /chat/stream (server-sent events) shows it as the model writes it,
// where the model streams: provisional text, replaced by the conversation once committed.
(function () {
  const form = document.getElementById("chat");
  const list = document.getElementById("messages");
  const status = document.getElementById("status");
  const link = document.getElementById("link");
  // The number of stored messages a reply is waited for beyond, while one is.
  let waitingBeyond = null;
  // The reply stream while a reply is awaited, and the item of the reply being written.
  let source = null;
  let writing = null;

  function show(data) {
    list.textContent = "";
    writing = null;
    for (const message of data.messages) {
      const item = document.createElement("li");
      item.className = message.role;
      item.textContent = message.content;
      list.appendChild(item);
    }
    if (data.session && !document.getElementById("inspect")) {
      const a = document.createElement("a");
      a.id = "inspect";
      a.href = "/conversations/" + data.session;
      a.textContent = "Inspect this conversation";
      link.appendChild(a);
    }
  }

  async function refresh() {
    const response = await fetch("/chat/messages", { credentials: "same-origin" });
    if (!response.ok) return;
    const data = await response.json();
    const last = data.messages[data.messages.length - 1];
    if (waitingBeyond !== null) {
      if (data.messages.length > waitingBeyond && last && last.role === "assistant") {
        waitingBeyond = null;
        status.textContent = "";
        show(data);
      }
    } else {
      show(data);
    }
  }

  async function poll() {
    try {
      await refresh();
    } finally {
      setTimeout(poll, 1000);
    }
  }

  // The item of the reply being written, made when its first text arrives.
  function written(text) {
    if (!writing) {
      writing = document.createElement("li");
      writing.className = "writing";
      list.appendChild(writing);
    }
    writing.textContent = text;
  }

  // Opens the reply stream; resolves once it listens (or cannot), so that nothing the turn
  // writes is missed.
  function listen() {
    return new Promise(function (resolve) {
      if (source || !window.EventSource) return resolve();
      source = new EventSource("/chat/stream");
      // A stream that does not open soon does not hold the message back.
      setTimeout(resolve, 2000);
      source.addEventListener("open", function () { resolve(); });
      source.addEventListener("error", function () {
        // The stream is a nicety: without it the reply shows once committed.
        if (source) source.close();
        source = null;
        resolve();
      });
      source.addEventListener("writing", function (event) {
        if (waitingBeyond !== null) written(JSON.parse(event.data));
      });
      source.addEventListener("discard", function () {
        if (writing) writing.remove();
        writing = null;
      });
      source.addEventListener("spoken", function (event) {
        if (waitingBeyond === null) return;
        written(JSON.parse(event.data));
        writing.className = "writing spoken";
        writing = null;
      });
      source.addEventListener("committed", function () {
        if (source) source.close();
        source = null;
        refresh();
      });
    });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const input = document.getElementById("text");
    const text = input.value.trim();
    if (!text) return;
    waitingBeyond = list.querySelectorAll("li:not(.pending):not(.writing)").length + 1;
    const item = document.createElement("li");
    item.className = "user pending";
    item.textContent = text;
    list.appendChild(item);
    input.value = "";
    status.textContent = "The soul is thinking…";
    const body = new URLSearchParams(new FormData(form));
    body.set("text", text);
    await listen();
    await fetch("/chat", {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "x-chat-script": "1" },
    });
  });

  setTimeout(poll, 1000);
})();
