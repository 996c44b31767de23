// keel dashboard: small progressive enhancements. Every page reads and works without this file.
//  - [data-live]: polls a same-origin JSON endpoint and updates cards, counts and fragments.
//  - [data-stream]: follows a running task's log and status over Server-Sent Events.
//  - [data-copy]: copies a field's text; [data-confirm]: asks before a destructive form posts.
(function () {
  'use strict';

  function onReady(fn) {
    if (document.readyState === 'loading') {
      document.addEventListener('DOMContentLoaded', fn);
    } else {
      fn();
    }
  }

  function signInAgain() {
    var next = window.location.pathname + window.location.search;
    window.location.href = '/admin/login?reason=expired&next=' + encodeURIComponent(next);
  }

  // Live regions: the server renders every value and fragment; this only swaps them in.
  function live(root) {
    var url = root.getAttribute('data-live');
    var every = parseInt(root.getAttribute('data-live-every'), 10) || 5000;
    var failures = 0;
    var timer = null;

    function apply(data) {
      var cards = data.cards || {};
      Object.keys(cards).forEach(function (id) {
        var card = root.querySelector('[data-card="' + id + '"]');
        if (!card) { return; }
        var c = cards[id];
        var value = card.querySelector('[data-field="value"]');
        var hint = card.querySelector('[data-field="hint"]');
        if (value) { value.textContent = c.value; }
        if (hint) { hint.textContent = c.hint; }
        card.classList.remove('ok', 'warn', 'bad');
        if (c.tone) { card.classList.add(c.tone); }
      });
      var counts = data.counts || {};
      Object.keys(counts).forEach(function (id) {
        var el = root.querySelector('[data-count="' + id + '"]');
        if (el) { el.textContent = counts[id]; }
      });
      var html = data.html || {};
      Object.keys(html).forEach(function (id) {
        var el = root.querySelector('[data-html="' + id + '"]');
        // Fragments are rendered and escaped by the server's templates.
        if (el && el.innerHTML !== html[id]) { el.innerHTML = html[id]; }
      });
    }

    function schedule() {
      clearTimeout(timer);
      var wait = every * Math.min(8, Math.pow(2, failures));
      timer = setTimeout(poll, wait);
    }

    function poll() {
      if (document.hidden) { schedule(); return; }
      fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' } })
        .then(function (r) {
          if (r.status === 401) { signInAgain(); throw new Error('signed out'); }
          if (!r.ok) { throw new Error('HTTP ' + r.status); }
          return r.json();
        })
        .then(function (data) { failures = 0; apply(data); root.removeAttribute('data-stale'); })
        .catch(function () { failures += 1; root.setAttribute('data-stale', ''); })
        .then(schedule);
    }

    document.addEventListener('visibilitychange', function () {
      if (!document.hidden) { poll(); }
    });
    schedule();
  }

  // A running task: status and new log lines as they come; a reload once it finishes shows
  // its result and attempts.
  function stream(log) {
    if (!window.EventSource) { return; }
    var skip = parseInt(log.getAttribute('data-next-line'), 10) || 0;
    var seen = 0;
    var status = document.querySelector('[data-task-status]');
    var first = status ? status.textContent : '';
    var es = new EventSource(log.getAttribute('data-stream'));
    es.addEventListener('log', function (e) {
      seen += 1;
      if (seen <= skip) { return; }
      var empty = document.querySelector('[data-log-empty]');
      if (empty) { empty.remove(); }
      var line = document.createElement('span');
      line.className = 'line';
      line.textContent = e.data;
      log.appendChild(line);
      log.appendChild(document.createTextNode('\n'));
      log.scrollTop = log.scrollHeight;
    });
    es.addEventListener('status', function (e) {
      try {
        var s = JSON.parse(e.data).status;
        if (status && s) { status.textContent = s; status.className = 'badge ' + s; }
      } catch (err) { /* ignore a malformed event */ }
    });
    es.addEventListener('end', function () {
      es.close();
      if (!status || status.textContent !== first || seen > skip) { window.location.reload(); }
    });
    es.onerror = function () {
      // The browser reconnects by itself; a lost session shows up as a failed reconnect.
      if (es.readyState === EventSource.CLOSED) { es.close(); }
    };
  }

  function copy(button) {
    var field = document.getElementById(button.getAttribute('data-copy'));
    if (!field) { return; }
    button.hidden = false;
    button.addEventListener('click', function () {
      var done = document.querySelector('[data-copied]');
      function shown() { if (done) { done.hidden = false; } }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(shown, function () {
          field.select(); document.execCommand('copy'); shown();
        });
      } else {
        field.select();
        document.execCommand('copy');
        shown();
      }
    });
  }

  onReady(function () {
    document.addEventListener('submit', function (e) {
      var message = e.target.getAttribute && e.target.getAttribute('data-confirm');
      if (message && !window.confirm(message)) { e.preventDefault(); }
    });
    Array.prototype.forEach.call(document.querySelectorAll('[data-live]'), live);
    Array.prototype.forEach.call(document.querySelectorAll('[data-stream]'), stream);
    Array.prototype.forEach.call(document.querySelectorAll('[data-copy]'), copy);
  });
}());
