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
