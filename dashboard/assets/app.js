// Drake dashboard: keeps the server-rendered page live. Progress events move bars
// in place; state changes refetch this page's fragment (at most once a second).
(function () {
  "use strict";
  const main = document.getElementById("live");
  if (!main) return;

  // The job's HLS in hls.js (embedded, loaded by the job page), with a rung picker
  // ("auto" or one rung), an audio-language picker and a captions picker. Names
  // come from the playlists (the source's metadata), so they are set as text.
  let hls = null;
  function option(value, label) {
    const o = document.createElement("option");
    o.value = String(value);
    o.textContent = label;
    return o;
  }
  function fill(select, first, items, label, selected) {
    select.replaceChildren(...(first ? [first] : []), ...items.map(function (t, i) { return option(i, label(t)); }));
    select.value = String(selected);
  }
  function bindPlayer() {
    const box = document.querySelector(".player[data-hls]");
    const video = box && box.querySelector("video");
    if (hls && hls.media === video) return;
    if (hls) { hls.destroy(); hls = null; window.drakeHls = null; }
    if (!box) return;
    if (typeof Hls === "undefined" || !Hls.isSupported()) {
      // No MSE: a browser with native HLS plays the master playlist itself.
      video.src = box.dataset.hls;
      return;
    }
    // No worker (the CSP allows none) and the lowest rung first: playable at once.
    hls = new Hls({ enableWorker: false, startLevel: 0 });
    window.drakeHls = hls; // for ops in the console, and the browser tests
    const rung = document.getElementById("rung-select");
    const audio = document.getElementById("audio-select");
    const captions = document.getElementById("captions-select");
    function rungs() {
      fill(rung, option(-1, "auto"), hls.levels, function (l) { return l.height + "p"; }, hls.autoLevelEnabled ? -1 : hls.currentLevel);
    }
    function audios() {
      fill(audio, null, hls.audioTracks, function (t) { return t.lang ? t.name + " (" + t.lang + ")" : t.name; }, hls.audioTrack);
    }
    function subtitles() {
      fill(captions, option(-1, "off"), hls.subtitleTracks, function (t) { return t.lang ? t.name + " (" + t.lang + ")" : t.name; }, hls.subtitleTrack);
    }
    hls.on(Hls.Events.MANIFEST_PARSED, function () { rungs(); audios(); subtitles(); });
    hls.on(Hls.Events.AUDIO_TRACKS_UPDATED, audios);
    hls.on(Hls.Events.SUBTITLE_TRACKS_UPDATED, subtitles);
    hls.on(Hls.Events.LEVEL_SWITCHED, function () { if (!hls.autoLevelEnabled) rung.value = String(hls.currentLevel); });
    rung.addEventListener("change", function () {
      // A chosen rung lands now (the buffer ahead is replaced); auto lets ABR decide.
      const level = Number(rung.value);
      if (level < 0) hls.nextLevel = -1; else hls.currentLevel = level;
    });
    audio.addEventListener("change", function () { hls.audioTrack = Number(audio.value); });
    captions.addEventListener("change", function () {
      const track = Number(captions.value);
      hls.subtitleDisplay = track >= 0;
      hls.subtitleTrack = track;
    });
    hls.loadSource(box.dataset.hls);
    hls.attachMedia(video);
  }

  function bind() {
    bindPlayer();
    document.querySelectorAll(".bar[data-progress]").forEach(function (el) {
      el.querySelector(".fill").style.width = Number(el.dataset.progress) + "%";
    });
    // The player's rendition picker.
    document.querySelectorAll("select[data-player]").forEach(function (sel) {
      sel.addEventListener("change", function () {
        const video = document.getElementById(sel.dataset.player);
        if (video) { video.src = sel.value; video.load(); }
      });
    });
    // Destructive buttons ask first.
    document.querySelectorAll("button.danger").forEach(function (b) {
      if (b.closest("[data-no-confirm]")) return;
      const form = b.closest("form");
      if (form && form.action.endsWith("/remove")) {
        form.addEventListener("submit", function (e) {
          if (!window.confirm("Remove this worker? Its running tasks go back to the queue.")) e.preventDefault();
        });
      }
    });
    // Filters apply on change.
    const state = document.getElementById("state-filter");
    if (state) state.addEventListener("change", function () { state.form.submit(); });
  }

  function setBar(taskId, progress, state) {
    document.querySelectorAll('.bar[data-task="' + CSS.escape(taskId) + '"]').forEach(function (el) {
      const pct = Math.round(Math.max(0, Math.min(1, progress)) * 100);
      el.dataset.progress = String(pct);
      el.querySelector(".fill").style.width = pct + "%";
      el.querySelector(".pct").textContent = pct + "%";
      if (state) {
        el.className = "bar state-" + state;
        el.dataset.state = state;
      }
    });
  }

  // Never swap the page under a click: a button replaced between mousedown and
  // mouseup gets no click, and a form removed before it submits never submits.
  // Nor while the pointer is on a control: a row that changes height moves the
  // buttons below it away from the pointer just before the press.
  let holdUntil = 0;
  let leaving = false;
  document.addEventListener("pointerdown", function () { holdUntil = Date.now() + 1500; }, true);
  document.addEventListener("pointermove", function (e) {
    if (e.target instanceof Element && e.target.closest("button, a, select, input, label")) holdUntil = Date.now() + 1500;
  }, true);
  document.addEventListener("submit", function () { leaving = true; }, true);
  function held() { return leaving || Date.now() < holdUntil; }

  let timer = null;
  let busy = false;
  // What the live part shows, as the browser serializes it (taken before bind()
  // touches it), so a refresh that brings nothing new leaves the page alone.
  let last = main.innerHTML;
  function normalized(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.innerHTML;
  }
  function refresh() {
    const url = main.dataset.fragment;
    if (!url || timer || leaving) return;
    timer = setTimeout(async function () {
      timer = null;
      if (busy || held()) { refresh(); return; }
      // Never pull the page from under someone typing or choosing.
      const active = document.activeElement;
      if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) { refresh(); return; }
      busy = true;
      try {
        const r = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
        if (r.status === 401) { window.location = "/login"; return; }
        if (r.ok) {
          const html = normalized(await r.text());
          if (held()) { busy = false; refresh(); return; }
          const video = document.getElementById("player");
          if (video && !video.paused) return; // keep a playing video alive
          if (html !== last) {
            last = html;
            main.innerHTML = html;
            bind();
          }
          main.dataset.updated = String(Date.now());
        }
      } catch (e) { /* the next event or tick tries again */ } finally { busy = false; }
    }, 700);
  }

  function onEvent(data) {
    let ev;
    try { ev = JSON.parse(data); } catch (e) { return; }
    if (ev.type === "task" && ev.task_id && typeof ev.progress === "number") {
      setBar(ev.task_id, ev.progress, ev.state === "running" ? "running" : null);
    }
    if (ev.type !== "task" || ev.state !== "running") refresh();
  }
  // What happened between this page's render and its stream going live (or while
  // the stream reconnected) came as no event: catch up once when it is live.
  let live = false;
  function onStatus(status) {
    document.body.dataset.live = status;
    if (status === "connected" && !live) refresh();
    live = status === "connected";
  }

  // Events come from one stream shared by all of this browser's tabs (events.js);
  // a browser without SharedWorker gets a stream of its own.
  let port = null;
  let own = null;
  function connect() {
    if (typeof SharedWorker === "function") {
      try {
        port = new SharedWorker("/ui/events.js", { name: "drake-events" }).port;
        port.onmessage = function (m) {
          if (m.data.status) onStatus(m.data.status);
          if (m.data.data) onEvent(m.data.data);
        };
        port.start();
        return;
      } catch (e) { port = null; }
    }
    own = new EventSource("/ui/events");
    own.onmessage = function (m) { onEvent(m.data); };
    own.onopen = function () { onStatus("connected"); };
    own.onerror = function () { onStatus("reconnecting"); };
  }
  function disconnect() {
    if (port) { port.postMessage("close"); port.close(); port = null; }
    if (own) { own.close(); own = null; }
  }
  window.addEventListener("pagehide", function () { leaving = true; disconnect(); });
  window.addEventListener("pageshow", function (e) {
    if (!e.persisted) return;
    // Back from the back-forward cache: live again, and catch up.
    leaving = false;
    connect();
    refresh();
  });
  connect();

  const every = Number(main.dataset.refreshMs || 0);
  if (every > 0) setInterval(refresh, every);
  bind();
})();
