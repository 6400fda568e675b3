/* Approvals pages: changed-field marks, presence, live receipts and lists.
 *
 * Everything here is an extra; the pages work without it. Partial updates
 * and live refreshes come from console.js (data-swap, data-live).
 */
(function () {
  "use strict";

  var HEARTBEAT_SECONDS = 60;

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // --- A live list refreshes what it shows now --------------------------

  // console.js swaps a filtered page into the list but refreshes a live
  // list from its data-src; keep that source on the filters and page shown.
  function liveTarget(selector) {
    var target = selector ? document.querySelector(selector) : null;
    return target && target.hasAttribute("data-live") ? target : null;
  }

  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-swap]");
    if (!form || (form.getAttribute("method") || "get").toLowerCase() !== "get") return;
    var target = liveTarget(form.dataset.swap);
    if (!target) return;
    var url = new URL(form.getAttribute("action") || window.location.href, window.location.href);
    url.search = new URLSearchParams(new FormData(form)).toString();
    target.dataset.src = url.toString();
  }, true);

  document.addEventListener("click", function (event) {
    var link = event.target.closest("a[data-swap]");
    if (!link) return;
    var target = liveTarget(link.dataset.swap);
    if (target) target.dataset.src = link.href;
  }, true);

  // --- Modify form: show which fields differ from the proposal ----------

  function sameValue(value, original) {
    if (value === original) return true;
    if (value === "" || original === "") return false;
    var a = Number(value), b = Number(original);
    return !isNaN(a) && !isNaN(b) && a === b;
  }

  function markChanged(field) {
    var box = field.closest("[data-original]");
    if (!box) return;
    var value = field.type === "checkbox" ? (field.checked ? "true" : "false") : field.value.trim();
    var changed = !sameValue(value, box.dataset.original);
    box.classList.toggle("changed", changed);
    var note = box.querySelector(".change-note");
    if (note) note.hidden = !changed;
  }

  ["input", "change"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      if (event.target.closest && event.target.closest("[data-original]")) markChanged(event.target);
    });
  });

  // --- Presence: "looking now" in the queue ------------------------------

  function heartbeat() {
    var holder = document.querySelector("[data-presence]");
    var url = holder && holder.dataset.presence;
    if (!url) return;
    window.setInterval(function () {
      if (document.hidden) return;
      fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken() }
      }).catch(function () { /* presence is best effort */ });
    }, HEARTBEAT_SECONDS * 1000);
  }

  // --- Receipts follow their run -----------------------------------------

  // A receipt that is not final refreshes itself every few seconds (2 s while
  // its run goes on), through its own "Refresh" link so console.js does the
  // swap. A pushed event (data-live on the box) refreshes it sooner.
  function pollReceipts() {
    var now = Date.now();
    document.querySelectorAll('[data-receipt][data-final="0"]').forEach(function (receipt) {
      var link = receipt.querySelector("a[data-receipt-refresh]");
      var box = link && document.querySelector(link.dataset.swap);
      if (!box || box.getAttribute("aria-busy") === "true") return;
      var every = (parseInt(receipt.dataset.pollSeconds, 10) || 2) * 1000;
      var last = parseInt(box.dataset.polledAt || "0", 10);
      if (now - last < every) return;
      box.dataset.polledAt = String(now);
      link.click();
    });
  }

  function start() {
    heartbeat();
    window.setInterval(function () {
      if (!document.hidden) pollReceipts();
    }, 1000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
