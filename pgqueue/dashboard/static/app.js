// pgqueue dashboard: live updates and confirmations. No library, no build step.
(function () {
  "use strict";
  // Confirm every guarded action (forms with data-confirm); delegated, so swapped-in forms work too.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
    if (form.hasAttribute && form.hasAttribute("data-queue-form")) {
      // the form's own action is <root>/queues/pause: keep the root (the dashboard may be mounted under a path)
      var root = form.getAttribute("action").replace(/\/queues\/pause$/, "");
      form.action = root + "/queues/" + encodeURIComponent(form.elements.queue.value) + "/pause";
    }
  });
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("[data-back]");
    if (link && window.history.length > 1) { event.preventDefault(); window.history.back(); }
  });

  // A run's output (run page): its stream's events, appended as they come (as text, never as HTML).
  var box = document.getElementById("stream");
  if (box && window.EventSource) {
    var output = document.getElementById("stream-output");
    var shown = document.getElementById("stream-state");
    var bar = document.getElementById("stream-progress");
    var attempt = null, count = 0;
    var source = new EventSource(box.getAttribute("data-stream"));
    source.addEventListener("chunk", function (event) {
      var chunk = JSON.parse(event.data);
      if (attempt !== null && chunk.attempt !== attempt) {
        output.appendChild(document.createTextNode("\n--- attempt " + chunk.attempt + " ---\n"));
      }
      attempt = chunk.attempt;
      var text = typeof chunk.data === "string" ? chunk.data : JSON.stringify(chunk.data) + "\n";
      output.appendChild(document.createTextNode(text));
      output.scrollTop = output.scrollHeight;
      count = chunk.offset + 1;
      shown.textContent = count + " chunk(s), streaming";
    });
    source.addEventListener("progress", function (event) {
      var p = JSON.parse(event.data), meter = bar.querySelector("progress");
      bar.hidden = false;
      if (p.total) { meter.max = p.total; meter.value = p.done; } else { meter.removeAttribute("value"); }
      bar.querySelector(".message").textContent =
        p.done + (p.total !== null ? "/" + p.total : "") + (p.message ? " · " + p.message : "");
    });
    source.addEventListener("end", function (event) {
      source.close();  // else the browser reconnects
      shown.textContent = count + " chunk(s), run " + JSON.parse(event.data).status;
      box.setAttribute("data-ended", "true");
    });
  }

  // Live updates: every 2 s, while the tab is visible, fetch this page's live block and swap it in.
  var live = document.getElementById("live");
  var period = live && Number(live.getAttribute("data-live"));
  var state = document.getElementById("live-state");
  if (!period) { if (state) state.hidden = true; return; }
  var busy = false;

  function typing() {
    var el = document.activeElement;
    return el && live.contains(el) && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT");
  }

  function refresh() {
    if (busy || document.hidden || typing()) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Fragment": "live" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error(String(response.status));
        return response.text();
      })
      .then(function (html) {
        // keep open <details> (attempts) open across the swap
        var open = Array.prototype.map.call(live.querySelectorAll("details[open][data-attempt]"),
          function (d) { return d.getAttribute("data-attempt"); });
        live.innerHTML = html;
        live.querySelectorAll("details[data-attempt]").forEach(function (d) {
          if (open.indexOf(d.getAttribute("data-attempt")) >= 0) d.open = true;
        });
        state.className = "live-state";
        state.textContent = "live";
      })
      .catch(function () { state.className = "live-state stale"; state.textContent = "offline"; })
      .then(function () { busy = false; });
  }
  setInterval(refresh, period);
  document.addEventListener("visibilitychange", function () {
    state.textContent = document.hidden ? "paused" : "live";
    if (!document.hidden) refresh();
  });
})();
