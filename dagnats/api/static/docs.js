// The offline docs page of the DagNats HTTP API: reads /openapi.json, lists every operation
// grouped by tag, and lets the reader send a request (path and query parameters, a JSON body).
"use strict";
(function () {
  const tokenInput = document.getElementById("token");
  const statusLine = document.getElementById("status");
  const root = document.getElementById("operations");
  tokenInput.value = sessionStorage.getItem("dagnats-token") || "";

  function headers(extra) {
    const result = Object.assign({}, extra || {});
    const token = tokenInput.value.trim();
    if (token) { result["Authorization"] = "Bearer " + token; }
    return result;
  }

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    Object.entries(attributes || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function operationView(path, method, operation) {
    const box = element("details");
    const summary = element("summary");
    summary.appendChild(element("span", { class: "method " + method.toUpperCase() }, method.toUpperCase()));
    summary.appendChild(element("code", {}, path));
    summary.appendChild(document.createTextNode("  " + (operation.summary || "")));
    box.appendChild(summary);
    if (operation.description) { box.appendChild(element("p", {}, operation.description)); }
    const inputs = {};
    (operation.parameters || []).forEach((parameter) => {
      const id = method + path + parameter.in + parameter.name;
      box.appendChild(element("label", { for: id }, parameter.in + " " + parameter.name + (parameter.required ? " (required)" : "")));
      const input = element("input", { id: id, type: "text" });
      inputs[parameter.in + ":" + parameter.name] = input;
      box.appendChild(input);
    });
    let body = null;
    if (operation.requestBody) {
      box.appendChild(element("label", {}, "JSON body"));
      body = element("textarea");
      box.appendChild(body);
    }
    const send = element("button", {}, "Send");
    const output = element("pre");
    send.addEventListener("click", async () => {
      let url = path.replace(/\{([^}:]+)(:[^}]*)?\}/g, (_, name) => encodeURIComponent((inputs["path:" + name] || {}).value || ""));
      const query = new URLSearchParams();
      const extra = {};
      Object.entries(inputs).forEach(([key, input]) => {
        const [where, name] = key.split(":");
        if (!input.value) { return; }
        if (where === "query") { query.append(name, input.value); }
        if (where === "header") { extra[name] = input.value; }
      });
      if ([...query].length) { url += "?" + query.toString(); }
      const init = { method: method.toUpperCase(), headers: headers(extra) };
      if (body && body.value.trim()) { init.body = body.value; init.headers["Content-Type"] = "application/json"; }
      output.textContent = "...";
      try {
        const response = await fetch(url, init);
        const text = await response.text();
        let shown = text;
        try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (error) { /* not JSON */ }
        output.textContent = response.status + " " + response.statusText + "\n" + shown;
      } catch (error) {
        output.textContent = String(error);
      }
    });
    box.appendChild(send);
    box.appendChild(output);
    return box;
  }

  async function load() {
    sessionStorage.setItem("dagnats-token", tokenInput.value.trim());
    root.textContent = "";
    const response = await fetch("/openapi.json", { headers: headers() });
    if (!response.ok) {
      statusLine.textContent = "GET /openapi.json: " + response.status + " (a token is needed?)";
      return;
    }
    const spec = await response.json();
    statusLine.textContent = spec.info.title + " " + spec.info.version;
    const groups = {};
    Object.entries(spec.paths || {}).forEach(([path, methods]) => {
      Object.entries(methods).forEach(([method, operation]) => {
        const tag = (operation.tags || ["other"])[0];
        (groups[tag] = groups[tag] || []).push(operationView(path, method, operation));
      });
    });
    Object.keys(groups).sort().forEach((tag) => {
      root.appendChild(element("h2", {}, tag));
      groups[tag].forEach((view) => root.appendChild(view));
    });
  }

  document.getElementById("load").addEventListener("click", load);
  load();
})();
