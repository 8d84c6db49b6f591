// DagNats console: a run's live model text (the run page's "Live model text" panel).
// Reads the console's SSE stream of the run's live chunks; shows the current turn's text with
// textContent only (never parsed as HTML), at most maxChars of it.
(() => {
  const panel = document.getElementById("live-panel");
  if (!panel || !window.EventSource) return;
  const maxChars = 200000;
  const out = panel.querySelector(".live-text");
  const state = panel.querySelector(".live-state");
  const source = new EventSource(panel.dataset.src);
  let current = "";
  source.addEventListener("text", (event) => {
    const chunk = JSON.parse(event.data);
    const key = `${chunk.step}/${chunk.turn}/${chunk.attempt}`;
    if (key !== current) {
      current = key;
      out.textContent = "";
      panel.dataset.step = chunk.step;
      panel.dataset.turn = String(chunk.turn);
    }
    state.textContent = `${chunk.step}, turn ${chunk.turn} (attempt ${chunk.attempt}): streaming`;
    out.textContent = (out.textContent + chunk.text).slice(-maxChars);
    panel.dataset.state = "streaming";
  });
  source.addEventListener("turn_end", (event) => {
    const chunk = JSON.parse(event.data);
    state.textContent = `${chunk.step}, turn ${chunk.turn}: the model call ended`;
    panel.dataset.state = "turn-ended";
  });
  source.addEventListener("end", (event) => {
    state.textContent = `The run ended (${event.data}); its turns are below.`;
    panel.dataset.state = "ended";
    source.close();
  });
})();
