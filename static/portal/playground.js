// The playground: edit a conversation, stream the answer from the portal's
// session-authenticated endpoint, and show the same request as curl and Python.
(function () {
  "use strict";
  var root = document.getElementById("playground");
  if (!root) return;
  var form = document.getElementById("playground-form");
  var list = document.getElementById("pg-messages");
  var template = document.getElementById("pg-message-template");
  var output = document.getElementById("pg-output");
  var meta = document.getElementById("pg-meta");
  var sendButton = document.getElementById("pg-send");
  var stopButton = document.getElementById("pg-stop");
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  var baseUrl = root.dataset.baseUrl;
  var controller = null;

  function addMessage(role, content) {
    var row = template.content.firstElementChild.cloneNode(true);
    row.querySelector("[data-role]").value = role;
    row.querySelector("[data-content]").value = content || "";
    list.appendChild(row);
    updateCode();
    return row;
  }

  function request() {
    var messages = [];
    list.querySelectorAll(".message-row").forEach(function (row) {
      var content = row.querySelector("[data-content]").value;
      if (content.trim()) {
        messages.push({ role: row.querySelector("[data-role]").value, content: content });
      }
    });
    return {
      model: form.elements.model.value,
      messages: messages,
      temperature: parseFloat(form.elements.temperature.value),
      max_tokens: parseInt(form.elements.max_tokens.value, 10),
    };
  }

  function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }

  function updateCode() {
    var body = request();
    var payload = JSON.stringify(Object.assign({}, body, { stream: true }), null, 2);
    document.getElementById("pg-code-curl").textContent =
      "curl -N " + baseUrl + "/chat/completions \\\n" +
      '  -H "Authorization: Bearer sk_your_api_key" \\\n' +
      '  -H "Content-Type: application/json" \\\n' +
      "  -d " + shellQuote(payload);
    // JSON string literals are valid Python string literals.
    var messages = body.messages.map(function (m) {
      return "        {\"role\": " + JSON.stringify(m.role) + ", \"content\": " + JSON.stringify(m.content) + "},";
    }).join("\n");
    document.getElementById("pg-code-python").textContent =
      "from openai import OpenAI\n\n" +
      "client = OpenAI(api_key=\"sk_your_api_key\", base_url=" + JSON.stringify(baseUrl) + ")\n\n" +
      "stream = client.chat.completions.create(\n" +
      "    model=" + JSON.stringify(body.model) + ",\n" +
      "    messages=[\n" + messages + (messages ? "\n" : "") + "    ],\n" +
      "    temperature=" + (isNaN(body.temperature) ? "0.7" : body.temperature) + ",\n" +
      "    max_tokens=" + (isNaN(body.max_tokens) ? "512" : body.max_tokens) + ",\n" +
      "    stream=True,\n" +
      ")\n" +
      "for chunk in stream:\n" +
      "    if chunk.choices and chunk.choices[0].delta.content:\n" +
      "        print(chunk.choices[0].delta.content, end=\"\", flush=True)\n";
  }

  function showError(message) {
    output.classList.remove("streaming");
    output.classList.add("error");
    output.textContent = (output.textContent ? output.textContent + "\n\n" : "") + "Error: " + message;
  }

  function showUsage(usage, tier) {
    document.getElementById("pg-credits").textContent = usage.credits_used;
    document.getElementById("pg-tokens").textContent =
      usage.prompt_tokens + " prompt + " + usage.completion_tokens + " completion";
    document.getElementById("pg-tier").textContent = tier || "";
    document.getElementById("pg-remaining").textContent =
      usage.tokens_remaining_estimate === undefined ? "—" : usage.tokens_remaining_estimate;
    meta.hidden = false;
  }

  function busy(on) {
    sendButton.disabled = on;
    stopButton.hidden = !on;
    output.classList.toggle("streaming", on);
  }

  async function send(event) {
    event.preventDefault();
    var body = request();
    if (!body.messages.length) { showError("Write a message first."); return; }
    output.textContent = "";
    output.classList.remove("error");
    meta.hidden = true;
    controller = new AbortController();
    busy(true);
    var answer = "";
    var finished = false;
    try {
      var response = await fetch(root.dataset.endpoint, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) {
        var problem = await response.json().catch(function () { return null; });
        showError(problem && problem.error ? problem.error.message : "HTTP " + response.status);
        return;
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      while (!finished) {
        var part = await reader.read();
        if (part.done) break;
        buffer += decoder.decode(part.value, { stream: true });
        var events = buffer.split("\n\n");
        buffer = events.pop();
        events.forEach(function (event) {
          event.split("\n").forEach(function (line) {
            if (line.indexOf("data: ") !== 0) return;
            var data = line.slice(6);
            if (data === "[DONE]") { finished = true; return; }
            var chunk = JSON.parse(data);
            if (chunk.error) { showError(chunk.error.message); finished = true; return; }
            (chunk.choices || []).forEach(function (choice) {
              if (choice.delta && choice.delta.content) {
                answer += choice.delta.content;
                output.textContent = answer;
              }
            });
            if (chunk.usage) showUsage(chunk.usage, chunk.model_tier);
          });
        });
      }
      if (answer && !output.classList.contains("error")) {
        addMessage("assistant", answer);
        addMessage("user", "");
      }
    } catch (error) {
      if (error.name === "AbortError") showError("Stopped.");
      else showError(error.message || String(error));
    } finally {
      busy(false);
      controller = null;
    }
  }

  list.addEventListener("click", function (event) {
    var remove = event.target.closest("[data-remove]");
    if (remove) { remove.closest(".message-row").remove(); updateCode(); }
  });
  form.addEventListener("input", updateCode);
  form.addEventListener("change", updateCode);
  form.addEventListener("submit", send);
  document.getElementById("pg-add").addEventListener("click", function () {
    var last = list.querySelector(".message-row:last-child [data-role]");
    addMessage(last && last.value === "user" ? "assistant" : "user", "").querySelector("textarea").focus();
  });
  stopButton.addEventListener("click", function () { if (controller) controller.abort(); });

  addMessage("system", "You are a helpful assistant.");
  addMessage("user", "Hello! What can you do?");
})();
