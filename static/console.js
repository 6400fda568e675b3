/* Agentmatic console: relative times, partial page updates, j/k navigation.
 *
 * Every page works without this file; it only makes them quicker to use.
 *
 * Partial updates (a few lines instead of a library):
 *   <a href="…" data-swap="#target">          GET, put the response into #target
 *   <form … data-swap="#target">              submit by fetch, same
 *   <div data-poll="10" data-src="…">         refresh every 10 s while visible
 *   <div data-live="/ws/…/" data-src="…">     refresh when the WebSocket says
 *                                             something changed (polling with
 *                                             data-poll, or every 15 s, while
 *                                             the socket is down)
 *   data-swap-mode="outer" on a link          replace the target itself (a
 *                                             "load more" row becomes the rows)
 * The request carries "X-Partial: 1"; the server answers a fragment with
 * "X-Partial-Response: 1". Any other answer (a redirect to the login page,
 * say) is opened as a whole page instead.
 *
 * Lists: <ol data-nav-list> with <li data-nav-item> children move with j/k;
 * Enter opens the first link of the focused item.
 */
(function () {
  "use strict";

  // --- Relative times ----------------------------------------------------

  var relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
  var exactFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "long" });
  var UNITS = [
    ["year", 31536000], ["month", 2592000], ["week", 604800],
    ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]
  ];

  function relative(date) {
    var seconds = (date.getTime() - Date.now()) / 1000;
    if (Math.abs(seconds) < 45) return "just now";
    for (var i = 0; i < UNITS.length; i++) {
      if (Math.abs(seconds) >= UNITS[i][1]) {
        return relativeFormat.format(Math.round(seconds / UNITS[i][1]), UNITS[i][0]);
      }
    }
    return "just now";
  }

  function renderTimes(root) {
    root.querySelectorAll("time[data-relative]").forEach(function (element) {
      var date = new Date(element.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      element.textContent = relative(date);
      element.title = exactFormat.format(date);
    });
  }

  // --- Partial updates ---------------------------------------------------

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function sameOrigin(url) {
    return new URL(url, window.location.href).origin === window.location.origin;
  }

  function swap(target, url, options, mode) {
    target.setAttribute("aria-busy", "true");
    options.headers = Object.assign({ "X-Partial": "1" }, options.headers || {});
    options.credentials = "same-origin";
    return fetch(url, options)
      .then(function (response) {
        if (response.headers.get("X-Partial-Response") !== "1") {
          window.location.assign(response.url);
          return;
        }
        return response.text().then(function (html) {
          if (mode === "outer") {
            var parent = target.parentNode;
            target.insertAdjacentHTML("afterend", html);
            parent.removeChild(target);
            renderTimes(parent);
            return;
          }
          target.innerHTML = html;
          renderTimes(target);
          if (target.hasAttribute("data-focus")) target.focus();
        });
      })
      .catch(function () {
        target.innerHTML = '<p class="error" role="alert">The console could not be reached. ' +
          "Check your connection and try again; nothing was changed by this page.</p>";
      })
      .finally(function () {
        target.removeAttribute("aria-busy");
      });
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest("a[data-swap]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    var target = document.querySelector(link.dataset.swap);
    if (!target || !sameOrigin(link.href)) return;
    event.preventDefault();
    swap(target, link.href, { method: "GET" }, link.dataset.swapMode);
    if (link.hasAttribute("data-push")) window.history.pushState({}, "", link.href);
    markCurrent(link);
  });

  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-swap]");
    if (!form) return;
    var target = document.querySelector(form.dataset.swap);
    var action = form.getAttribute("action") || window.location.href;
    if (!target || !sameOrigin(action)) return;
    event.preventDefault();
    var data = new FormData(form);
    if (event.submitter && event.submitter.name) {
      data.append(event.submitter.name, event.submitter.value);
    }
    if ((form.getAttribute("method") || "get").toLowerCase() === "get") {
      var url = new URL(action, window.location.href);
      url.search = new URLSearchParams(data).toString();
      swap(target, url.toString(), { method: "GET" });
    } else {
      swap(target, action, { method: "POST", body: data, headers: { "X-CSRFToken": csrfToken() } });
    }
  });

  function startPolling(element) {
    var seconds = Math.max(2, parseInt(element.dataset.poll, 10) || 10);
    window.setInterval(function () {
      // Never replace what someone is typing into or has focused.
      if (document.hidden || element.contains(document.activeElement)) return;
      if (element.getAttribute("aria-busy") === "true") return;
      swap(element, element.dataset.src, { method: "GET" });
    }, seconds * 1000);
  }

  // The row whose link opened a detail panel is the list's current one.
  function markCurrent(link) {
    var item = link.closest("[data-nav-item]");
    var list = link.closest("[data-nav-list]");
    if (!item || !list) return;
    list.querySelectorAll('[data-nav-item][aria-current="true"]').forEach(function (other) {
      other.removeAttribute("aria-current");
    });
    item.setAttribute("aria-current", "true");
  }

  // --- Live updates ------------------------------------------------------

  function startLive(element) {
    var fallback = null;
    var retries = 0;

    // Never replace what someone is typing into; keep focus where it was.
    function refresh() {
      var active = document.activeElement;
      if (element.contains(active) && isTyping(active)) return;
      var focusedId = element.contains(active) && active.id ? active.id : null;
      swap(element, element.dataset.src, { method: "GET" }).then(function () {
        var again = focusedId && document.getElementById(focusedId);
        if (again) again.focus();
      });
    }

    function poll() {
      if (fallback) return;
      var seconds = Math.max(2, parseInt(element.dataset.poll, 10) || 15);
      fallback = window.setInterval(function () {
        if (document.hidden || element.getAttribute("aria-busy") === "true") return;
        refresh();
      }, seconds * 1000);
    }

    function connect() {
      if (!("WebSocket" in window)) return poll();
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + window.location.host + element.dataset.live);
      socket.addEventListener("open", function () {
        retries = 0;
        if (fallback) {
          window.clearInterval(fallback);
          fallback = null;
        }
        // Catch up on what happened between the page's render and now.
        refresh();
      });
      socket.addEventListener("message", refresh);
      socket.addEventListener("close", function () {
        // Poll while the socket is down; try it again a few times, slower each time.
        poll();
        if (retries < 5) {
          retries += 1;
          window.setTimeout(connect, 2000 * retries * retries);
        }
      });
    }

    connect();
  }

  window.addEventListener("popstate", function () {
    window.location.reload();
  });

  // --- j/k navigation ----------------------------------------------------

  function isTyping(element) {
    return element && (element.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(element.tagName));
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || isTyping(document.activeElement)) return;
    var active = document.activeElement;
    var list = (active && active.closest("[data-nav-list]")) || document.querySelector("[data-nav-list]");
    if (!list) return;
    var items = Array.prototype.slice.call(list.querySelectorAll("[data-nav-item]"));
    if (!items.length) return;
    var index = items.indexOf(active && active.closest("[data-nav-item]"));

    if (event.key === "j" || event.key === "k") {
      event.preventDefault();
      var next = event.key === "j" ? Math.min(index + 1, items.length - 1) : Math.max(index - 1, 0);
      items[next].setAttribute("tabindex", "-1");
      items[next].focus();
      items[next].scrollIntoView({ block: "nearest" });
    } else if (event.key === "Enter" && index >= 0 && active === items[index]) {
      var link = items[index].querySelector("a[href]");
      if (link) {
        event.preventDefault();
        link.click();
      }
    }
  });

  // --- Start -------------------------------------------------------------

  function start() {
    renderTimes(document);
    document.querySelectorAll("[data-poll][data-src]:not([data-live])").forEach(startPolling);
    document.querySelectorAll("[data-live][data-src]").forEach(startLive);
    // Keep "4 min ago" true while the page stays open.
    window.setInterval(function () { renderTimes(document); }, 30000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
