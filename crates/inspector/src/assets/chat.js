// The chat page: sends a message without leaving the page and shows the conversation as the
// store holds it, asked for again every second, so that a reply shows once it is committed.
(function () {
  const form = document.getElementById("chat");
  const list = document.getElementById("messages");
  const status = document.getElementById("status");
  const link = document.getElementById("link");
  // The number of stored messages a reply is waited for beyond, while one is.
  let waitingBeyond = null;

  function show(data) {
    list.textContent = "";
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

  async function poll() {
    try {
      const response = await fetch("/chat/messages", { credentials: "same-origin" });
      if (response.ok) {
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
    } finally {
      setTimeout(poll, 1000);
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const input = document.getElementById("text");
    const text = input.value.trim();
    if (!text) return;
    waitingBeyond = list.querySelectorAll("li:not(.pending)").length + 1;
    const item = document.createElement("li");
    item.className = "user pending";
    item.textContent = text;
    list.appendChild(item);
    input.value = "";
    status.textContent = "The soul is thinking…";
    const body = new URLSearchParams(new FormData(form));
    body.set("text", text);
    await fetch("/chat", {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "x-chat-script": "1" },
    });
  });

  setTimeout(poll, 1000);
})();
